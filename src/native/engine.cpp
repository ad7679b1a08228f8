#include "engine.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace pylfm {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Prompt rows prefilled per loop turn while other sequences generate: a long prompt is
// taken in between their steps instead of stalling them (speech must keep real time).
constexpr int kPrefillSlice = 64;

struct Cancelled {};

ggml_backend_dev_t pick_device(const std::string& device) {
    // "cpu": no GPU. "auto": the first GPU the build has, else the CPU. "<backend>:<i>" (the
    // registry's name, any case: "cuda:0", "mtl:0"), "<backend>", "gpu", "gpu:<i>": that
    // device or an error. pylfm.engine's device table maps the user's words to these.
    if (device == "cpu") return nullptr;
    std::string kind = device, index_str;
    auto colon = device.find(':');
    if (colon != std::string::npos) { kind = device.substr(0, colon); index_str = device.substr(colon + 1); }
    for (auto& c : kind) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    int want = 0;
    if (!index_str.empty()) {
        if (!std::all_of(index_str.begin(), index_str.end(), [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
            throw std::invalid_argument("device '" + device + "': the index must be a number");
        want = std::stoi(index_str);
    }
    int seen = 0;
    std::vector<std::string> available;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        auto t = ggml_backend_dev_type(d);
        if (t != GGML_BACKEND_DEVICE_TYPE_GPU && t != GGML_BACKEND_DEVICE_TYPE_IGPU) continue;
        std::string reg;
        for (char c : std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(d))))
            reg += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        available.push_back(reg);
        if (kind == "auto" || kind == "gpu" || kind == reg) {
            if (seen++ == want) return d;
        }
    }
    if (kind == "auto") return nullptr;
    std::string have;
    for (auto& a : available) have += (have.empty() ? "" : ", ") + a;
    throw std::invalid_argument("device '" + device + "' is not available in this build (GPU devices: " +
                                (have.empty() ? std::string("none") : have) + ")");
}

}  // namespace

// A prompt ready to prefill: runs of token ids and of embeddings, in order.
struct Engine::Prompt {
    struct Segment {
        bool embd = false;
        std::vector<llama_token> tokens;
        std::vector<float> rows;                    // embd: n x n_embd floats (filled by encode for audio input)
        const mtmd_input_chunk* chunk = nullptr;    // audio input still to encode
        int n = 0;
    };
    std::vector<ChunksPtr> chunks;  // own the mtmd chunks the segments point into
    std::vector<Segment> segs;
    int n_rows = 0, n_audio = 0;
    bool encoded = false;
};

// A sequence slot of the context, the request it runs and what it has produced so far.
struct Engine::Slot {
    llama_seq_id seq = 0;
    bool reserved = false;  // owned by a session: its sequence outlives requests
    bool prefill_only = false;  // the request takes its prompt in and generates nothing
    enum Phase { Idle, Prefill, Generate } phase = Idle;
    llama_pos n_past = 0;

    // the request
    uint64_t id = 0;
    bool speech = false;
    std::shared_ptr<CancelFlag> cancel;
    SamplingParams params;
    SpeechParams sp;
    std::shared_ptr<Result> result;
    Prompt prompt;
    size_t seg = 0;
    int seg_off = 0;

    // the next row to decode: a token or an embedding; `item`: a generated one (not the prompt's last)
    llama_token next = -1;
    std::vector<float> next_embd;
    bool next_is_embd = false, next_is_item = false, checkpoint_after = false;

    // text generation
    SamplerPtr sampler;
    int max_new = 0;
    bool ctx_limited = false;
    std::string pending;  // bytes of a character not yet complete

    // speech generation
    bool audio_mode = false, text_done = false;
    int left = 0, steps = 0;
    SamplerPtr text_smpl, audio_smpl;

    // a session's checkpoints (recurrent state): at the start of its last reply, and before
    // the turn being read (a cancel while reading it goes back there)
    std::vector<uint8_t> ckpt, turn_ckpt;
    llama_pos ckpt_pos = -1, turn_pos = 0;

    bool busy() const { return phase != Idle; }
};

Engine::Engine(const std::string& model_path, const std::string& mmproj_path, int n_threads, const std::string& device,
               int n_ctx_seq, int n_batch, int n_slots, bool flash_attn, bool grow_ctx,
               const std::string& cpu_repack)
    : model_path_(model_path), n_threads_(n_threads), n_batch_(n_batch), n_slots_(std::max(1, n_slots)),
      flash_attn_(flash_attn), grow_ctx_(grow_ctx) {
    ensure_backend();
    auto t0 = std::chrono::steady_clock::now();
    gpu_ = pick_device(device);

    llama_model_params mp = llama_model_default_params();
    ggml_backend_dev_t devs[2] = {gpu_, nullptr};
    if (gpu_) { mp.devices = devs; mp.n_gpu_layers = -1; }
    else { mp.n_gpu_layers = 0; }
    model_ = cpu_weights_.load_model(cpu_repack, model_path, mp, gpu_ != nullptr);  // never into a crashing buffer type
    if (!model_) throw engine_error("could not load the text model '" + model_path + "'");
    vocab_ = llama_model_get_vocab(model_);
    max_ctx_seq_ = std::max(n_ctx_seq, static_cast<int>(llama_model_n_ctx_train(model_)));
    // An all-F32 model gets an F32 cache: its hidden states then match the reference closely
    // enough for greedy audio codes to agree (the depthformer's decisions are often close).
    char ftype[16] = {0};
    f32_cache_ = llama_model_meta_val_str(model_, "general.file_type", ftype, sizeof ftype) > 0 && std::atoi(ftype) == 0;

    try {
        token_embd_.open(model_path, n_embd());
        for (int i = 0; i <= n_slots_; ++i) {
            slots_.push_back(std::make_unique<Slot>());
            slots_.back()->seq = static_cast<llama_seq_id>(i);
        }
        create_context(n_ctx_seq);
    } catch (...) {
        free_all();
        throw;
    }

    mtmd_context_params mcp = mtmd_context_params_default();
    mcp.use_gpu = gpu_ != nullptr;
    mcp.device = gpu_;
    mcp.n_threads = n_threads;
    mcp.print_timings = false;
    mcp.warmup = false;
    mcp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    placement_.attach(mcp);
    mctx_ = mtmd_init_from_file(mmproj_path.c_str(), model_, mcp);
    if (!mctx_) { free_all(); throw engine_error("could not load the mmproj '" + mmproj_path + "' for this text model"); }
    if (!mtmd_support_audio(mctx_)) {
        free_all();
        throw std::invalid_argument("the mmproj '" + mmproj_path + "' has no audio encoder; "
                                    "pass the LFM2-Audio mmproj (mmproj-*.gguf converted from the same checkpoint)");
    }
    sample_rate_ = mtmd_get_audio_sample_rate(mctx_);
    device_ = gpu_ ? std::string(ggml_backend_dev_name(gpu_)) + " (" + ggml_backend_dev_description(gpu_) + ")" : "CPU";
    load_ms_ = ms_since(t0);
}

Engine::~Engine() { free_all(); }

void Engine::free_all() {
    speech_.reset();
    if (mctx_) { mtmd_free(mctx_); mctx_ = nullptr; }
    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }
    if (model_) { llama_model_free(model_); model_ = nullptr; }
}

void Engine::create_context(int n_ctx_seq) {
    const int n_seqs = n_slots_ + 1;  // + the probes' sequence
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(n_ctx_seq) * static_cast<uint32_t>(n_seqs);
    cp.n_batch = static_cast<uint32_t>(std::max(n_batch_, n_seqs));
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = static_cast<uint32_t>(n_seqs);
    // One KV stream per sequence (n_ctx / n_seq_max each): a batched token then attends
    // only to its own sequence's cells, not to every sequence's (masked) cells.
    cp.kv_unified = false;
    cp.n_threads = n_threads_;
    cp.n_threads_batch = n_threads_;
    cp.no_perf = true;
    cp.pooling_type = LLAMA_POOLING_TYPE_NONE;  // hidden states per row, for the audio head
    cp.flash_attn_type = flash_attn_ ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (f32_cache_) { cp.type_k = GGML_TYPE_F32; cp.type_v = GGML_TYPE_F32; }
    if (!gpu_) cp.op_offload = false;  // device="cpu" means no GPU work at all
    placement_.attach(cp);
    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }  // never hold two contexts' memory
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) throw engine_error("could not create a llama context of " + std::to_string(n_ctx_seq) +
                                  " tokens per sequence x " + std::to_string(n_seqs) + " sequences");
    n_ctx_seq_ = static_cast<int>(llama_n_ctx_seq(ctx_));
    embeddings_on_ = false;
}

// A larger context; the sessions' histories move over (saved and restored whole).
void Engine::grow_context(int n_ctx_seq) {
    std::vector<std::pair<Slot*, std::vector<uint8_t>>> kept;
    for (auto& sp : slots_) {
        if (!sp->reserved || sp->n_past == 0) continue;
        std::vector<uint8_t> data(llama_state_seq_get_size(ctx_, sp->seq));
        data.resize(llama_state_seq_get_data(ctx_, data.data(), data.size(), sp->seq));
        kept.emplace_back(sp.get(), std::move(data));
    }
    const int before = n_ctx_seq_;
    try {
        create_context(n_ctx_seq);
    } catch (const std::exception&) {
        create_context(before);  // back to the size that worked
        for (auto& k : kept) llama_state_seq_set_data(ctx_, k.second.data(), k.second.size(), k.first->seq);
        throw;
    }
    for (auto& k : kept)
        if (llama_state_seq_set_data(ctx_, k.second.data(), k.second.size(), k.first->seq) != k.second.size())
            throw engine_error("could not move a conversation's history into the larger context");
}

std::string Engine::description() const {
    char buf[256];
    llama_model_desc(model_, buf, sizeof buf);
    return buf;
}

std::string Engine::token_piece(llama_token t, bool special) const {
    char buf[256];
    int n = llama_token_to_piece(vocab_, t, buf, sizeof buf, 0, special);
    return n < 0 ? std::string() : std::string(buf, n);
}

std::vector<llama_token> Engine::tokenize_text(const std::string& text, bool special) const {
    int n = llama_tokenize(vocab_, text.c_str(), static_cast<int32_t>(text.size()), nullptr, 0, false, special);
    std::vector<llama_token> out(n < 0 ? -n : n);
    if (!out.empty())
        llama_tokenize(vocab_, text.c_str(), static_cast<int32_t>(text.size()), out.data(), static_cast<int32_t>(out.size()),
                       false, special);
    return out;
}

int Engine::count_tokens(const std::string& text, bool special) const {
    return static_cast<int>(tokenize_text(text, special).size());
}

std::string Engine::failure() const {
    std::lock_guard<std::mutex> lock(queue_mu_);
    return failure_;
}

// ---------------------------------------------------------------- prompt -> rows
// The one tokenizer: text and audio parts go through mtmd (audio becomes the encoder's
// embeddings), token parts as they are, frame parts as their audio embeddings.
Engine::Prompt Engine::tokenize(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio,
                                bool add_special) {
    Prompt p;
    std::vector<bool> used(audio.size(), false);
    std::vector<BitmapPtr> bitmaps;
    std::vector<mtmd_input_text> texts(parts.size());
    std::vector<mtmd_input_part> mparts(parts.size());

    auto add_tokens = [&](const llama_token* t, size_t n) {
        if (n == 0) return;
        if (p.segs.empty() || p.segs.back().embd) p.segs.emplace_back();
        auto& s = p.segs.back();
        s.tokens.insert(s.tokens.end(), t, t + n);
        s.n += static_cast<int>(n);
        p.n_rows += static_cast<int>(n);
    };
    bool first_run = true;
    size_t i = 0;
    while (i < parts.size()) {
        const PromptPart& part = parts[i];
        if (part.kind == PromptPart::Tokens) {
            for (llama_token t : part.tokens)
                if (t < 0 || t >= n_vocab()) throw std::invalid_argument("a prompt token id is out of range");
            add_tokens(part.tokens.data(), part.tokens.size());
            ++i;
            continue;
        }
        if (part.kind == PromptPart::Frames) {
            if (!speech_) throw std::invalid_argument("audio frames in a prompt need the speech GGUFs (load_speech)");
            if (!part.frames.empty()) {
                Prompt::Segment s;
                s.embd = true;
                std::vector<float> rows;
                for (const Frame& f : part.frames) {
                    speech_->embed(&f, 1, rows, nullptr);
                    s.rows.insert(s.rows.end(), rows.begin(), rows.end());
                }
                s.n = static_cast<int>(part.frames.size());
                p.n_rows += s.n;
                p.segs.push_back(std::move(s));
            }
            ++i;
            continue;
        }
        // a run of text and audio parts: mtmd's tokenizer
        std::vector<const mtmd_input_part*> ptrs;
        size_t j = i;
        for (; j < parts.size() && (parts[j].kind == PromptPart::Text || parts[j].kind == PromptPart::Audio); ++j) {
            const PromptPart& q = parts[j];
            if (q.kind == PromptPart::Audio) {
                if (q.audio < 0 || q.audio >= static_cast<int>(audio.size()) || used[q.audio])
                    throw std::invalid_argument("a prompt part refers to a missing audio clip");
                used[q.audio] = true;
                const auto& pcm = audio[q.audio];
                if (pcm.empty()) throw std::invalid_argument("an audio clip is empty");
                if (pcm.size() > static_cast<size_t>(kMaxClipSeconds * sample_rate_))
                    throw std::invalid_argument("an audio clip of " + std::to_string(pcm.size() / sample_rate_) +
                                                " s is longer than the audio encoder takes at once (" +
                                                std::to_string(static_cast<int>(kMaxClipSeconds)) + " s); use shorter windows");
                bitmaps.emplace_back(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
                if (!bitmaps.back()) throw engine_error("could not prepare the audio");
                mparts[j] = {nullptr, bitmaps.back().get()};
            } else {
                texts[j] = {q.text.c_str(), q.text.size(), false, q.special};
                mparts[j] = {&texts[j], nullptr};
            }
            ptrs.push_back(&mparts[j]);
        }
        ChunksPtr chunks(mtmd_input_chunks_init());
        const int32_t rc = mtmd_tokenize_from_parts(mctx_, chunks.get(), ptrs.data(), ptrs.size(), add_special && first_run);
        if (rc != 0) throw engine_error("could not turn the audio into model input (too short or unsupported)");
        first_run = false;
        for (size_t c = 0; c < mtmd_input_chunks_size(chunks.get()); ++c) {
            const mtmd_input_chunk* ch = mtmd_input_chunks_get(chunks.get(), c);
            if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                size_t n = 0;
                const llama_token* t = mtmd_input_chunk_get_tokens_text(ch, &n);
                add_tokens(t, n);
            } else if (mtmd_input_chunk_get_type(ch) == MTMD_INPUT_CHUNK_TYPE_AUDIO) {
                Prompt::Segment s;
                s.embd = true;
                s.chunk = ch;
                s.n = static_cast<int>(mtmd_input_chunk_get_n_tokens(ch));
                p.n_rows += s.n;
                p.n_audio += s.n;
                p.segs.push_back(std::move(s));
            } else {
                throw std::invalid_argument("images are not supported");
            }
        }
        p.chunks.push_back(std::move(chunks));
        i = j;
    }
    return p;
}

// Runs the audio encoder over the prompt's audio chunks (the expensive part of taking a
// request in).
void Engine::encode(Prompt& p, double& encode_ms) {
    if (p.encoded) return;
    const int n_embd = this->n_embd();
    auto t0 = std::chrono::steady_clock::now();
    for (auto& s : p.segs) {
        if (!s.chunk) continue;
        if (mtmd_encode_chunk(mctx_, s.chunk) != 0) throw engine_error("audio encoding failed");
        const float* e = mtmd_get_output_embd(mctx_);
        s.rows.assign(e, e + static_cast<size_t>(s.n) * n_embd);
        s.chunk = nullptr;
    }
    p.encoded = true;
    p.chunks.clear();
    encode_ms += ms_since(t0);
}

std::vector<llama_token> Engine::prompt_tokens(const std::vector<PromptPart>& parts,
                                               const std::vector<std::vector<float>>& audio) {
    Prompt p = tokenize(parts, audio, true);
    std::vector<llama_token> out;
    for (auto& s : p.segs) {
        if (s.embd) out.insert(out.end(), s.n, -1);
        else out.insert(out.end(), s.tokens.begin(), s.tokens.end());
    }
    return out;
}

std::vector<float> Engine::encode_audio(const std::vector<float>& pcm, size_t& n_tokens) {
    PromptPart part;
    part.kind = PromptPart::Audio;
    part.audio = 0;
    Prompt p = tokenize({part}, {pcm}, false);
    double ms = 0;
    encode(p, ms);
    for (auto& s : p.segs)
        if (s.embd) {
            n_tokens = static_cast<size_t>(s.n);
            return s.rows;
        }
    throw std::runtime_error("the prompt produced no audio chunk");
}

// Prefills up to `budget` rows of slot s's prompt (all but its last row, which the next
// decode step takes); returns true when the prompt is in.
bool Engine::prefill_some(Slot& s, int budget) {
    const int n_embd = this->n_embd();
    if (embeddings_on_) { llama_set_embeddings(ctx_, false); embeddings_on_ = false; }
    auto phase = placement_.phase("prefill");
    RowBatch batch(n_batch_);
    auto t0 = std::chrono::steady_clock::now();
    int done = 0;
    while (s.seg < s.prompt.segs.size()) {
        auto& seg = s.prompt.segs[s.seg];
        const bool last_seg = s.seg + 1 == s.prompt.segs.size();
        // the prompt's last row waits for the step (its output starts the generation), unless
        // the request only takes its prompt in
        const int end_of_seg = last_seg && !s.prefill_only ? seg.n - 1 : seg.n;
        if (s.seg_off >= end_of_seg) {
            if (last_seg) break;
            ++s.seg;
            s.seg_off = 0;
            continue;
        }
        if (done >= budget) break;
        if (s.cancel && s.cancel->set.load()) throw Cancelled{};
        const int m = std::min({end_of_seg - s.seg_off, n_batch_, budget - done});
        batch.clear();
        if (seg.embd) {
            batch.set_embd(seg.rows.data() + static_cast<size_t>(s.seg_off) * n_embd);
            for (int j = 0; j < m; ++j) batch.add_embd_row(s.n_past++, s.seq);
        } else {
            for (int j = 0; j < m; ++j) batch.add(seg.tokens[s.seg_off + j], s.n_past++, s.seq, false);
        }
        if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("prompt evaluation failed");
        s.seg_off += m;
        done += m;
    }
    s.result->prefill_ms += ms_since(t0);
    const bool in = s.seg + 1 >= s.prompt.segs.size() &&
                    s.seg_off >= s.prompt.segs[s.seg].n - (s.prefill_only ? 0 : 1);
    if (!in) return false;
    if (s.prefill_only) {  // in whole: nothing to generate
        s.result->turn_taken = true;
        s.prompt = Prompt();
        return true;
    }
    // the last row becomes the first input of generation
    const auto& last = s.prompt.segs.back();
    s.next_is_item = false;
    s.next_is_embd = last.embd;
    if (last.embd) s.next_embd.assign(last.rows.end() - n_embd, last.rows.end());
    else s.next = last.tokens.back();
    s.checkpoint_after = s.reserved;
    s.prompt = Prompt();  // its memory is no longer needed
    s.phase = Slot::Generate;
    return true;
}

// ---------------------------------------------------------------- sessions
Engine::Slot* Engine::free_slot() {
    for (int i = 0; i < n_slots_; ++i)
        if (!slots_[i]->reserved && !slots_[i]->busy()) return slots_[i].get();
    return nullptr;
}

Engine::Slot& Engine::session_slot(int session) const {
    if (session < 0 || session >= n_slots_ || !slots_[session]->reserved)
        throw std::invalid_argument("no such session (closed?)");
    return *slots_[session];
}

int Engine::open_session() {
    for (int i = n_slots_ - 1; i >= 0; --i) {  // from the end: transient requests take the first free slots
        Slot& s = *slots_[i];
        if (s.reserved || s.busy()) continue;
        llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, -1, -1);
        if (speech_) speech_->reset(s.seq);
        s.reserved = true;
        s.n_past = 0;
        s.ckpt.clear();
        s.ckpt_pos = -1;
        return i;
    }
    return -1;
}

void Engine::close_session(int session) {
    Slot& s = session_slot(session);
    if (s.busy()) throw std::invalid_argument("the session is still generating; cancel its reply first");
    llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, -1, -1);
    s.reserved = false;
    s.n_past = 0;
    s.ckpt.clear();
    s.ckpt_pos = -1;
}

void Engine::reset_session(int session) {
    Slot& s = session_slot(session);
    if (s.busy()) throw std::invalid_argument("the session is still generating; cancel its reply first");
    llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, -1, -1);
    s.n_past = 0;
    s.ckpt.clear();
    s.ckpt_pos = -1;
}

// The recurrent (short-conv) state right after the reply's prompt: restoring it and
// removing the attention cells behind it rolls the sequence back to that point.
void Engine::checkpoint(Slot& s) {
    const size_t size = llama_state_seq_get_size_ext(ctx_, s.seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
    s.ckpt.resize(size);
    s.ckpt.resize(llama_state_seq_get_data_ext(ctx_, s.ckpt.data(), size, s.seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY));
    s.ckpt_pos = s.n_past;
}

void Engine::rollback_session(int session) {
    Slot& s = session_slot(session);
    if (s.busy()) throw std::invalid_argument("the session is still generating; cancel its reply first");
    if (s.ckpt_pos < 0 || s.ckpt.empty()) throw std::invalid_argument("the session has no reply to roll back");
    if (llama_state_seq_set_data_ext(ctx_, s.ckpt.data(), s.ckpt.size(), s.seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) !=
        s.ckpt.size())
        throw engine_error("could not restore the conversation's checkpoint");
    if (!llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, s.ckpt_pos, -1))
        throw engine_error("could not remove the cut part of the reply");
    s.n_past = s.ckpt_pos;
}

void Engine::undo_turn(int session) {
    Slot& s = session_slot(session);
    if (s.busy()) throw std::invalid_argument("the session is still busy; cancel its request first");
    bool ok = true;
    if (s.turn_pos > 0)
        ok = llama_state_seq_set_data_ext(ctx_, s.turn_ckpt.data(), s.turn_ckpt.size(), s.seq,
                                          LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == s.turn_ckpt.size();
    ok = ok && llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, s.turn_pos, -1);
    if (!ok) throw engine_error("could not take the last turn back out of the conversation");
    s.n_past = s.turn_pos;
}

int Engine::session_n_past(int session) const { return session_slot(session).n_past; }
bool Engine::session_busy(int session) const { return session_slot(session).busy(); }

void Engine::load_speech(const std::string& vocoder_path, const std::string& detokenizer_path) {
    speech_.reset();
    speech_ = std::make_unique<SpeechHead>(model_, gpu_, n_threads_, n_slots_, vocoder_path, detokenizer_path,
                                           cpu_weights_.policy());
}

// ---------------------------------------------------------------- the loop
void Engine::submit(Request req) {
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        if (!failure_.empty()) throw std::runtime_error("the engine stopped after an error (" + failure_ +
                                                        "); load the model again");
        if (stop_) throw std::runtime_error("the engine has been shut down");
        queue_.push_back(std::move(req));
    }
    queue_cv_.notify_one();
}

std::future<void> Engine::post(std::function<void()> fn) {
    std::packaged_task<void()> task(std::move(fn));
    std::future<void> done = task.get_future();
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        if (!failure_.empty()) throw std::runtime_error("the engine stopped after an error (" + failure_ + ")");
        if (stop_) throw std::runtime_error("the engine has been shut down");
        if (std::this_thread::get_id() != loop_thread_) {
            tasks_.push_back(std::move(task));
            queue_cv_.notify_one();
            return done;
        }
    }
    task();  // already on the loop's thread
    return done;
}

void Engine::inject_failure() {
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        inject_failure_ = true;
    }
    queue_cv_.notify_all();
}

void Engine::shutdown() {
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        stop_ = true;
    }
    queue_cv_.notify_all();
}

int Engine::generating() const {
    int n = 0;
    for (auto& s : slots_) n += s->phase == Slot::Generate;
    return n;
}

bool Engine::prefilling() const {
    for (auto& s : slots_)
        if (s->phase == Slot::Prefill) return true;
    return false;
}

void Engine::release(Slot& s) {
    if (!s.reserved) llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, -1, -1);
    s.phase = Slot::Idle;
    s.sampler.reset();
    s.text_smpl.reset();
    s.audio_smpl.reset();
    s.cancel.reset();
    s.result.reset();
    s.prompt = Prompt();
    s.next_embd.clear();
    if (!s.reserved) s.n_past = 0;
    --n_busy_;
}

void Engine::finish(Slot& s, const char* reason, std::vector<Event>& events) {
    std::string tail = take_utf8(s.pending, true);
    if (!tail.empty()) {
        s.result->text += tail;
        Event ev{Event::Piece, s.id};
        ev.text = tail;
        events.push_back(std::move(ev));
    }
    s.result->stop_reason = reason;
    s.result->n_past = s.n_past;
    Event done{Event::Done, s.id};
    done.result = s.result;
    events.push_back(std::move(done));
    release(s);
}

void Engine::fail(Slot& s, const std::string& message, std::vector<Event>& events) {
    Event ev{Event::Error, s.id};
    ev.text = message;
    events.push_back(std::move(ev));
    if (s.reserved) {  // the history is no longer what the session thinks: start it over
        llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, -1, -1);
        s.n_past = 0;
        s.ckpt.clear();
        s.ckpt_pos = -1;
    }
    release(s);
}

// Ends a cancelled request. A session whose new turn was not yet read whole goes back to
// before it (its turn checkpoint): the conversation then holds exactly what it did.
void Engine::cancel_slot(Slot& s, std::vector<Event>& events) {
    if (s.reserved && !s.result->turn_taken) {
        bool ok = true;
        if (s.turn_pos > 0)
            ok = llama_state_seq_set_data_ext(ctx_, s.turn_ckpt.data(), s.turn_ckpt.size(), s.seq,
                                              LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) == s.turn_ckpt.size();
        ok = ok && llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, s.turn_pos, -1);
        if (!ok) { fail(s, "the conversation was interrupted while its turn was being read", events); return; }
        s.n_past = s.turn_pos;
    }
    finish(s, "cancelled", events);
}

// Frees the slots of cancelled requests, so their slots go to waiting work at once.
void Engine::sweep_cancelled(std::vector<Event>& events) {
    for (auto& sp : slots_)
        if (sp->busy() && sp->cancel && sp->cancel->set.load()) cancel_slot(*sp, events);
}

// Takes the head of the queue into a slot: its prompt is tokenized and its audio encoded
// (prefill follows in slices, between decode steps).
void Engine::take_in(std::vector<Event>& events) {
    if (prefilling()) return;  // one prompt at a time
    std::unique_ptr<Request> r;
    if (waiting_) {
        if (n_busy_ > 0) return;  // wait for the context to drain, then grow it
        r = std::move(waiting_);
    } else {
        std::lock_guard<std::mutex> lock(queue_mu_);
        if (queue_.empty()) return;
        r = std::make_unique<Request>(std::move(queue_.front()));
        queue_.pop_front();
    }
    auto result = std::make_shared<Result>();
    auto error = [&](const std::string& message) {
        Event ev{Event::Error, r->id};
        ev.text = message;
        events.push_back(std::move(ev));
    };
    if (r->cancel && r->cancel->set.load()) {
        result->stop_reason = "cancelled";
        Event ev{Event::Done, r->id};
        ev.result = result;
        events.push_back(std::move(ev));
        return;
    }
    Slot* slot = nullptr;
    try {
        if (r->session >= 0) {
            slot = &session_slot(r->session);
            if (slot->busy()) throw std::invalid_argument("the session is already generating a reply");
        } else {
            slot = free_slot();
            if (!slot) {  // the scheduler keeps fewer requests in flight than slots: this should not happen
                std::lock_guard<std::mutex> lock(queue_mu_);
                queue_.push_front(std::move(*r));
                return;
            }
        }
        if (r->speech && !speech_) throw std::invalid_argument("speech output is not loaded (load_speech)");
        Prompt p = tokenize(r->parts, r->audio, slot->n_past == 0);
        if (p.segs.empty() || p.segs.back().embd)
            throw std::invalid_argument("the prompt must end with text after the audio");
        const int max_new = r->speech ? r->speech_params.max_new_tokens : r->params.max_new_tokens;
        const int need = slot->n_past + p.n_rows + std::max(1, max_new) + 2;
        if (need > n_ctx_seq_ && grow_ctx_ && n_ctx_seq_ < max_ctx_seq_) {
            if (n_busy_ > 0) {  // FCFS: nothing is taken in past it; the busy ones finish first
                waiting_ = std::move(r);
                return;
            }
            // at least double: a conversation's history grows every turn, and each growth waits
            // for the busy sequences to finish and moves every session over
            grow_context(std::min(max_ctx_seq_, (std::max(need, 2 * n_ctx_seq_) + 255) / 256 * 256));
        }
        if (slot->n_past + p.n_rows + 1 > n_ctx_seq_)
            throw std::length_error("the request needs " + std::to_string(p.n_rows) + " prompt tokens" +
                                    (slot->n_past ? " after " + std::to_string(slot->n_past) + " of history" : std::string()) +
                                    " but a sequence's context holds " + std::to_string(n_ctx_seq_) +
                                    "; use shorter audio windows, a shorter prompt or a larger n_ctx");
        encode(p, result->encode_ms);
        result->n_prompt_tokens = p.n_rows;
        result->n_audio_tokens = p.n_audio;
        result->n_past = slot->n_past;
        if (slot->reserved) {
            slot->turn_pos = slot->n_past;
            slot->turn_ckpt.clear();
            if (slot->n_past > 0) {
                const size_t size = llama_state_seq_get_size_ext(ctx_, slot->seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
                slot->turn_ckpt.resize(size);
                slot->turn_ckpt.resize(llama_state_seq_get_data_ext(ctx_, slot->turn_ckpt.data(), size, slot->seq,
                                                                    LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY));
            }
        }

        Slot& s = *slot;
        s.phase = Slot::Prefill;
        ++n_busy_;
        s.id = r->id;
        s.speech = r->speech;
        s.cancel = r->cancel;
        s.params = r->params;
        s.sp = r->speech_params;
        s.result = result;
        s.prompt = std::move(p);
        s.seg = 0;
        s.seg_off = 0;
        s.pending.clear();
        s.steps = 0;
        // a session request that generates nothing only takes its prompt in (a turn read
        // ahead while the user may still go on: undo_turn takes it back out)
        s.prefill_only = s.reserved && max_new == 0;
        if (!s.speech) {
            Choice c;
            c.temperature = s.params.temperature;
            c.top_k = s.params.top_k;
            c.top_p = s.params.top_p;
            c.seed = s.params.seed;
            c.repeat_penalty = s.params.repeat_penalty;
            c.repeat_last_n = s.params.repeat_last_n;
            s.sampler = make_sampler(c, n_vocab());
            s.max_new = std::min(s.params.max_new_tokens, n_ctx_seq_ - s.n_past - s.prompt.n_rows);
            s.ctx_limited = s.max_new < s.params.max_new_tokens;
        } else {
            Choice text, audio;
            text.temperature = s.sp.text_temperature;
            text.top_k = s.sp.text_top_k;
            text.seed = s.sp.seed + 1;
            audio.temperature = s.sp.audio_temperature;
            audio.top_k = s.sp.audio_top_k;
            audio.seed = s.sp.seed;
            s.text_smpl = make_sampler(text, n_vocab());
            s.audio_smpl = make_sampler(audio, speech_->audio_vocab());
            s.audio_mode = s.sp.start_audio;
            s.text_done = false;
            s.left = s.audio_mode ? s.sp.n_audio : s.sp.n_text;
            speech_->reset(s.seq);
        }
    } catch (const std::exception& e) {
        error(e.what());
    }
}

bool Engine::looping(const Slot& s) const {
    const SamplingParams& sp = s.params;
    if (sp.loop_max_period <= 0) return false;
    const auto& t = s.result->tokens;
    const int n = static_cast<int>(t.size());
    for (int p = 1; p <= sp.loop_max_period; ++p) {
        int need = std::max(sp.loop_min_span, sp.loop_min_repeats * p);
        if (need > n) break;  // larger periods need even more tokens
        int k = 0;
        while (k < need - p && t[n - 1 - k] == t[n - 1 - k - p]) ++k;
        if (k == need - p) return true;
    }
    return false;
}

// A transcription row after the decode: choose its next token, stop or go on.
void Engine::after_text_row(Slot& s, const float* logits, std::vector<Event>& events) {
    const int n = n_vocab();
    const llama_token t = pick(s.sampler.get(), logits, n);
    if (!s.params.ignore_eos && is_eog(t)) { finish(s, "stop", events); return; }
    s.result->tokens.push_back(t);
    s.result->sum_logprob += log_prob(logits, n, t);
    s.pending += token_piece(t, false);
    std::string piece = take_utf8(s.pending, false);
    if (!piece.empty()) {
        s.result->text += piece;
        Event ev{Event::Piece, s.id};
        ev.text = std::move(piece);
        ev.token = t;
        events.push_back(std::move(ev));
    }
    if (static_cast<int>(s.result->tokens.size()) >= s.max_new) { finish(s, s.ctx_limited ? "context" : "length", events); return; }
    if (looping(s)) { finish(s, "repetition", events); return; }
    s.next = t;
    s.next_is_embd = false;
    s.next_is_item = true;
}

// Decodes one row per listed slot (their `next` inputs) in one llama_decode; with
// `hidden` the outputs are the final hidden states (llama.cpp's LFM2 graph then skips the
// LM head), else logits. Returns false (the slots failed) when llama_decode does.
bool Engine::decode_rows(const std::vector<Slot*>& rows, bool hidden, std::vector<Event>& events) {
    const int n_embd = this->n_embd();
    const int R = static_cast<int>(rows.size());
    bool any_embd = false;
    for (Slot* s : rows) any_embd |= s->next_is_embd;
    RowBatch batch(R);
    std::vector<float> embd;
    if (any_embd) {  // one kind of input per batch: text rows become their token's embedding
        embd.resize(static_cast<size_t>(R) * n_embd);
        for (int r = 0; r < R; ++r) {
            Slot& s = *rows[r];
            float* dst = embd.data() + static_cast<size_t>(r) * n_embd;
            if (s.next_is_embd) std::memcpy(dst, s.next_embd.data(), n_embd * sizeof(float));
            else token_embd_.row(s.next, dst);
        }
        batch.set_embd(embd.data());
    }
    for (int r = 0; r < R; ++r) {
        Slot& s = *rows[r];
        if (any_embd) batch.add_embd_row(s.n_past, s.seq);
        else batch.add(s.next, s.n_past, s.seq, true);
    }
    llama_batch b = batch.get();
    std::vector<int8_t> outputs(R, 1);
    b.logits = outputs.data();
    if (hidden != embeddings_on_) { llama_set_embeddings(ctx_, hidden); embeddings_on_ = hidden; }
    auto t0 = std::chrono::steady_clock::now();
    {
        auto phase = placement_.phase("decode");
        if (llama_decode(ctx_, b) != 0) {
            std::string msg = engine_error("llama_decode failed during generation").what();
            for (Slot* s : rows) fail(*s, msg, events);
            return false;
        }
    }
    n_decode_steps_.fetch_add(1);
    n_decode_rows_.fetch_add(R);
    for (int64_t m = max_decode_rows_.load(); R > m;)
        if (max_decode_rows_.compare_exchange_weak(m, R)) break;
    const double share = ms_since(t0) / R;  // the decode's time, split evenly
    for (Slot* s : rows) {
        ++s->n_past;
        if (s->next_is_item) ++s->result->n_fed;
        else s->result->turn_taken = true;
        if (s->checkpoint_after) {
            checkpoint(*s);
            s->checkpoint_after = false;
        }
        s->result->decode_ms += share;
    }
    return true;
}

// One step for every generating sequence. LFM2's graph gives logits or hidden states, not
// both: the rows that choose a token (transcription, the text of speech) decode together,
// and the rows that make an audio frame decode together (one llama_decode each when both
// kinds are present); then tokens are sampled, and the audio rows' frames are made by the
// audio head in one batch and detokenized.
void Engine::step(std::vector<Event>& events) {
    std::vector<Slot*> text_rows, audio_rows;
    for (auto& sp : slots_) {
        Slot& s = *sp;
        if (s.phase != Slot::Generate) continue;
        if (s.cancel && s.cancel->set.load()) { cancel_slot(s, events); continue; }
        (s.speech && s.audio_mode ? audio_rows : text_rows).push_back(&s);
    }
    const int n_embd = this->n_embd();

    // ---- rows that choose a token
    if (!text_rows.empty() && decode_rows(text_rows, false, events)) {
        for (int r = 0; r < static_cast<int>(text_rows.size()); ++r) {
            Slot& s = *text_rows[r];
            n_text_rows_.fetch_add(1);
            const float* logits = llama_get_logits_ith(ctx_, r);
            if (!logits) { fail(s, "no logits for the text step", events); continue; }
            if (!s.speech) { after_text_row(s, logits, events); continue; }
            // a speech sequence's text step
            ++s.steps;
            if (s.sp.interleaved) --s.left;
            const llama_token tok = pick(s.text_smpl.get(), logits, n_vocab());
            if (s.sp.interleaved && tok == kImEnd) { finish(s, "stop", events); continue; }
            s.result->tokens.push_back(tok);
            s.result->order.push_back(0);
            s.pending += token_piece(tok, false);
            Event ev{Event::Piece, s.id};
            ev.token = tok;
            ev.text = take_utf8(s.pending, false);
            s.result->text += ev.text;
            events.push_back(std::move(ev));
            const char* stop = nullptr;
            if (!s.sp.interleaved) {
                if (tok == kAudioStart) s.audio_mode = true;
                if (tok == kImEnd) stop = "stop";
            } else {
                if (tok == kTextEnd) s.text_done = true;
                if (s.left == 0 || s.text_done) { s.audio_mode = true; s.left = s.sp.n_audio; }
            }
            s.next = tok;
            s.next_is_embd = false;
            s.next_is_item = true;
            if (!stop && s.steps >= s.sp.max_new_tokens) stop = "length";
            if (!stop && s.n_past >= n_ctx_seq_) stop = "context";
            if (stop) finish(s, stop, events);
        }
    }
    if (audio_rows.empty() || !decode_rows(audio_rows, true, events)) return;

    // ---- rows that make an audio frame: the audio head, all of them together
    const int B = static_cast<int>(audio_rows.size());
    n_audio_rows_.fetch_add(B);
    std::vector<float> hidden(static_cast<size_t>(B) * n_embd);
    std::vector<llama_sampler*> samplers(B);
    for (int i = 0; i < B; ++i) {
        const float* h = llama_get_embeddings_ith(ctx_, i);
        if (!h) throw engine_error("no hidden state for the audio step");
        std::memcpy(hidden.data() + static_cast<size_t>(i) * n_embd, h, n_embd * sizeof(float));
        samplers[i] = audio_rows[i]->audio_smpl.get();
    }
    std::vector<Frame> frames(B);
    auto t1 = std::chrono::steady_clock::now();
    speech_->frames(hidden.data(), B, samplers.data(), nullptr, frames.data());
    std::vector<bool> end(B);
    for (int i = 0; i < B; ++i) {
        end[i] = frames[i][0] == kEndOfAudio && !audio_rows[i]->sp.ignore_audio_end;
        if (end[i]) frames[i].fill(kEndOfAudio);
    }
    std::vector<float> next_in, detok_in;
    speech_->embed(frames.data(), B, next_in, &detok_in);
    const double depth_share = ms_since(t1) / B;
    std::vector<int> detok_seqs, detok_idx;
    for (int i = 0; i < B; ++i) {
        const Slot& s = *audio_rows[i];
        const bool valid = !end[i] && std::none_of(frames[i].begin(), frames[i].end(), [](int c) { return c >= kDetokCodes; });
        if (s.sp.detokenize && valid) { detok_seqs.push_back(s.seq); detok_idx.push_back(i); }
    }
    std::vector<float> spectrum;
    auto t2 = std::chrono::steady_clock::now();
    if (!detok_seqs.empty()) {
        const size_t w = detok_in.size() / B;
        std::vector<float> rows_in;
        for (int i : detok_idx) rows_in.insert(rows_in.end(), detok_in.begin() + i * w, detok_in.begin() + (i + 1) * w);
        speech_->detokenize(detok_seqs, rows_in.data(), spectrum);
    }
    const double detok_share = detok_seqs.empty() ? 0.0 : ms_since(t2) / static_cast<double>(detok_seqs.size());
    const size_t spec_rows = static_cast<size_t>(kUpsample) * speech_->n_spec();
    size_t d = 0;
    for (int i = 0; i < B; ++i) {
        Slot& s = *audio_rows[i];
        ++s.steps;
        if (s.sp.interleaved) --s.left;
        s.result->depth_ms += depth_share;
        Event ev{Event::Audio, s.id};
        ev.codes = frames[i];
        ev.audio_end = end[i];
        if (d < detok_idx.size() && detok_idx[d] == i) {
            ev.spectrum.assign(spectrum.begin() + d * spec_rows, spectrum.begin() + (d + 1) * spec_rows);
            s.result->detok_ms += detok_share;
            ++d;
        }
        events.push_back(std::move(ev));
        if (s.sp.interleaved && s.left == 0 && !s.text_done) { s.audio_mode = false; s.left = s.sp.n_text; }
        if (end[i]) s.audio_mode = false;
        s.result->order.push_back(1);
        if (!end[i]) s.result->frames.push_back(frames[i]);
        s.next_embd.assign(next_in.begin() + static_cast<size_t>(i) * n_embd, next_in.begin() + static_cast<size_t>(i + 1) * n_embd);
        s.next_is_embd = true;
        s.next_is_item = true;
        const char* stop = nullptr;
        if (end[i] && s.sp.stop_at_audio_end) stop = "audio_end";
        else if (!end[i] && s.sp.max_audio_frames >= 0 && static_cast<int>(s.result->frames.size()) >= s.sp.max_audio_frames)
            stop = "length";
        if (!stop && s.steps >= s.sp.max_new_tokens) stop = "length";
        if (!stop && s.n_past >= n_ctx_seq_) stop = "context";
        if (stop) finish(s, stop, events);
    }
}

void Engine::run(const EventSink& sink) {
    std::vector<Event> events;
    auto deliver = [&] {
        if (events.empty()) return;
        sink(events);
        events.clear();
    };
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        loop_thread_ = std::this_thread::get_id();
    }
    std::string failure;
    while (true) {
        std::packaged_task<void()> task;
        {
            std::unique_lock<std::mutex> lock(queue_mu_);
            queue_cv_.wait(lock, [&] {
                return stop_ || !queue_.empty() || n_busy_ > 0 || waiting_ || !tasks_.empty() || inject_failure_;
            });
            if (stop_) break;
            if (!tasks_.empty()) {
                task = std::move(tasks_.front());
                tasks_.pop_front();
            }
        }
        if (task.valid()) task();  // one posted task per turn, between steps (its exceptions go to its future)
        try {
            if (inject_failure_.load()) throw std::runtime_error("an injected internal error (a test)");
            sweep_cancelled(events);
            take_in(events);
            for (auto& sp : slots_) {
                if (sp->phase != Slot::Prefill) continue;
                const bool others = generating() > 0;
                try {
                    if (prefill_some(*sp, others ? kPrefillSlice : 1 << 30) && sp->prefill_only) finish(*sp, "stop", events);
                } catch (const Cancelled&) {
                    // swept next turn (the flag stays set)
                } catch (const std::exception& e) {
                    fail(*sp, e.what(), events);
                }
            }
            deliver();
            step(events);
            deliver();
        } catch (const std::exception& e) {
            failure = e.what();
            break;
        }
    }
    // Shut down (or failed): everything in flight or waiting ends, as cancelled or with the failure.
    auto end_request = [&](uint64_t id) {
        if (failure.empty()) {
            auto r = std::make_shared<Result>();
            r->stop_reason = "cancelled";
            Event ev{Event::Done, id};
            ev.result = r;
            events.push_back(std::move(ev));
        } else {
            Event ev{Event::Error, id};
            ev.text = "the engine stopped after an error: " + failure;
            events.push_back(std::move(ev));
        }
    };
    for (auto& s : slots_)
        if (s->busy()) {
            end_request(s->id);
            release(*s);
        }
    if (waiting_) {
        end_request(waiting_->id);
        waiting_.reset();
    }
    std::deque<std::packaged_task<void()>> dropped;
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        if (!failure.empty()) failure_ = failure;
        stop_ = true;
        dropped.swap(tasks_);  // never run: their futures report a broken promise
        loop_thread_ = std::thread::id();
        for (auto& req : queue_) end_request(req.id);
        queue_.clear();
    }
    dropped.clear();  // outside the lock: a task's captures may need the GIL to go
    deliver();
}

// ---------------------------------------------------------------- direct calls
// On the loop's thread, in the probes' own sequence: never waits for a slot.
std::vector<float> Engine::first_logits(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio) {
    Slot& s = *slots_[n_slots_];
    Prompt p = tokenize(parts, audio, true);
    if (p.n_rows + 1 > n_ctx_seq_) {
        if (!grow_ctx_ || n_busy_ > 0) throw std::length_error("the prompt does not fit this context");
        grow_context(std::min(max_ctx_seq_, (p.n_rows + 256) / 256 * 256));
    }
    double ms = 0;
    encode(p, ms);
    s.phase = Slot::Prefill;
    ++n_busy_;
    s.result = std::make_shared<Result>();
    s.prompt = std::move(p);
    s.seg = 0;
    s.seg_off = 0;
    s.n_past = 0;
    std::vector<float> out;
    try {
        prefill_some(s, 1 << 30);
        RowBatch batch(1);
        if (s.next_is_embd) {
            batch.set_embd(s.next_embd.data());
            batch.add_embd_row(s.n_past, s.seq);
        } else {
            batch.add(s.next, s.n_past, s.seq, true);
        }
        llama_batch b = batch.get();
        int8_t one = 1;
        b.logits = &one;
        if (llama_decode(ctx_, b) != 0) throw engine_error("prompt evaluation failed");
        const float* l = llama_get_logits_ith(ctx_, -1);
        out.assign(l, l + n_vocab());
    } catch (...) {
        release(s);
        throw;
    }
    release(s);
    return out;
}

}  // namespace pylfm
