#include "engine.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <stdexcept>

#include "mtmd-helper.h"

namespace pylfm {

namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// llama.cpp's LFM2A encoder has a fixed relative-position table: more than ~327 s of audio
// in one clip aborts the process (a GGML_ASSERT). Refuse long before that.
constexpr double kMaxClipSeconds = 320.0;

struct Cancelled {};

ggml_backend_dev_t pick_device(const std::string& device) {
    // "auto": the first GPU the build has (CUDA, Metal, ...), else the CPU.
    // "cpu": no GPU. "gpu"/"cuda"/"metal"/... optionally ":N": that device or an error.
    if (device == "cpu") return nullptr;
    std::string kind = device, index_str;
    auto colon = device.find(':');
    if (colon != std::string::npos) { kind = device.substr(0, colon); index_str = device.substr(colon + 1); }
    int want = index_str.empty() ? 0 : std::stoi(index_str);
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

// A sequence slot of the context and what its current request has produced so far.
struct Engine::Slot {
    llama_seq_id seq = 0;
    bool active = false;
    uint64_t id = 0;
    std::shared_ptr<CancelFlag> cancel;
    SamplingParams params;
    SamplerPtr sampler;
    llama_pos n_past = 0;
    llama_token next = -1;
    double next_logprob = 0;
    int max_new = 0;
    bool ctx_limited = false;  // max_new was cut to what the context holds
    std::string pending;       // bytes of a character not yet complete
    std::shared_ptr<Result> result;
};

// A request taken from the queue and tokenized, waiting for a slot.
struct Engine::Pending {
    Request req;
    ChunksPtr chunks;
    int n_prompt = 0;
};

Engine::Engine(const std::string& model_path, const std::string& mmproj_path, int n_threads, const std::string& device,
               int n_ctx_seq, int n_batch, int n_seq_max, bool flash_attn, bool grow_ctx)
    : n_threads_(n_threads), n_batch_(n_batch), n_seq_max_(std::max(1, n_seq_max)), flash_attn_(flash_attn),
      grow_ctx_(grow_ctx) {
    ensure_backend();
    auto t0 = std::chrono::steady_clock::now();
    gpu_ = pick_device(device);

    llama_model_params mp = llama_model_default_params();
    ggml_backend_dev_t devs[2] = {gpu_, nullptr};
    if (gpu_) { mp.devices = devs; mp.n_gpu_layers = -1; }
    else { mp.n_gpu_layers = 0; }
    model_ = llama_model_load_from_file(model_path.c_str(), mp);
    if (!model_) throw engine_error("could not load the text model '" + model_path + "'");
    vocab_ = llama_model_get_vocab(model_);
    max_ctx_seq_ = std::max(n_ctx_seq, static_cast<int>(llama_model_n_ctx_train(model_)));

    try {
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
    for (int i = 0; i < n_seq_max_; ++i) {
        slots_.push_back(std::make_unique<Slot>());
        slots_.back()->seq = static_cast<llama_seq_id>(i);
    }
    load_ms_ = ms_since(t0);
}

Engine::~Engine() { free_all(); }

void Engine::free_all() {
    if (mctx_) { mtmd_free(mctx_); mctx_ = nullptr; }
    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }
    if (model_) { llama_model_free(model_); model_ = nullptr; }
}

void Engine::create_context(int n_ctx_seq) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(n_ctx_seq) * static_cast<uint32_t>(n_seq_max_);
    cp.n_batch = static_cast<uint32_t>(n_batch_);
    cp.n_ubatch = static_cast<uint32_t>(n_batch_);
    cp.n_seq_max = static_cast<uint32_t>(n_seq_max_);
    // One KV stream per sequence (n_ctx / n_seq_max each): a batched token then attends
    // only to its own sequence's cells, not to every sequence's (masked) cells.
    cp.kv_unified = false;
    cp.n_threads = n_threads_;
    cp.n_threads_batch = n_threads_;
    cp.no_perf = true;
    cp.flash_attn_type = flash_attn_ ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (!gpu_) cp.op_offload = false;  // device="cpu" means no GPU work at all
    placement_.attach(cp);
    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }  // never hold two contexts' memory
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) throw engine_error("could not create a llama context of " + std::to_string(n_ctx_seq) +
                                  " tokens per sequence x " + std::to_string(n_seq_max_) + " sequences");
    n_ctx_seq_ = static_cast<int>(llama_n_ctx_seq(ctx_));
}

int Engine::n_ctx_seq() const { return n_ctx_seq_; }

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

int Engine::count_tokens(const std::string& text, bool special) const {
    int n = llama_tokenize(vocab_, text.c_str(), static_cast<int32_t>(text.size()), nullptr, 0, false, special);
    return n < 0 ? -n : n;
}

// ---------------------------------------------------------------- prompt -> chunks
ChunksPtr Engine::tokenize(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio) {
    std::vector<BitmapPtr> bitmaps;
    for (auto& pcm : audio) {
        if (pcm.empty()) throw std::invalid_argument("an audio clip is empty");
        if (pcm.size() > static_cast<size_t>(kMaxClipSeconds * sample_rate_))
            throw std::invalid_argument("an audio clip of " + std::to_string(pcm.size() / sample_rate_) +
                                        " s is longer than the audio encoder takes at once (" +
                                        std::to_string(static_cast<int>(kMaxClipSeconds)) + " s); use shorter windows");
        bitmaps.emplace_back(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
        if (!bitmaps.back()) throw engine_error("could not prepare the audio");
    }
    std::vector<mtmd_input_text> texts(parts.size());
    std::vector<mtmd_input_part> mparts(parts.size());
    std::vector<const mtmd_input_part*> ptrs;
    std::vector<bool> used(audio.size(), false);
    for (size_t i = 0; i < parts.size(); ++i) {
        const PromptPart& p = parts[i];
        if (p.audio >= 0) {
            if (p.audio >= static_cast<int>(audio.size()) || used[p.audio])
                throw std::invalid_argument("a prompt part refers to a missing audio clip");
            used[p.audio] = true;
            mparts[i] = {nullptr, bitmaps[p.audio].get()};
        } else {
            texts[i] = {p.text.c_str(), p.text.size(), false, p.special};
            mparts[i] = {&texts[i], nullptr};
        }
        ptrs.push_back(&mparts[i]);
    }
    ChunksPtr chunks(mtmd_input_chunks_init());
    int32_t rc;
    {
        std::lock_guard<std::mutex> lock(mtmd_mu_);
        rc = mtmd_tokenize_from_parts(mctx_, chunks.get(), ptrs.data(), ptrs.size(), /*add_special=*/true);
    }
    if (rc != 0) throw engine_error("could not turn the audio into model input (too short or unsupported)");
    return chunks;
}

std::vector<llama_token> Engine::prompt_tokens(const std::vector<PromptPart>& parts,
                                               const std::vector<std::vector<float>>& audio) {
    ChunksPtr chunks = tokenize(parts, audio);
    std::vector<llama_token> out;
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
        const mtmd_input_chunk* c = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n = 0;
            const llama_token* t = mtmd_input_chunk_get_tokens_text(c, &n);
            out.insert(out.end(), t, t + n);
        } else {
            out.insert(out.end(), mtmd_input_chunk_get_n_tokens(c), -1);
        }
    }
    return out;
}

std::vector<float> Engine::encode_audio(const std::vector<float>& pcm, size_t& n_tokens) {
    std::vector<PromptPart> parts(1);
    parts[0].audio = 0;
    ChunksPtr chunks = tokenize(parts, {pcm});
    for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
        const mtmd_input_chunk* c = mtmd_input_chunks_get(chunks.get(), i);
        if (mtmd_input_chunk_get_type(c) != MTMD_INPUT_CHUNK_TYPE_AUDIO) continue;
        std::lock_guard<std::mutex> lock(mtmd_mu_);
        if (mtmd_encode_chunk(mctx_, c) != 0) throw engine_error("audio encoding failed");
        n_tokens = mtmd_input_chunk_get_n_tokens(c);
        const float* e = mtmd_get_output_embd(mctx_);
        return std::vector<float>(e, e + n_tokens * static_cast<size_t>(n_embd()));
    }
    throw std::runtime_error("the prompt produced no audio chunk");
}

// Evaluates the prompt into slot s; the logits of its last token stay available.
void Engine::prefill(const mtmd_input_chunks* chunks, Slot& s) {
    size_t n_chunks = mtmd_input_chunks_size(chunks);
    if (n_chunks == 0 || mtmd_input_chunk_get_type(mtmd_input_chunks_get(chunks, n_chunks - 1)) != MTMD_INPUT_CHUNK_TYPE_TEXT)
        throw std::invalid_argument("the prompt must end with text after the audio");
    const int n_embd = this->n_embd();
    auto phase = placement_.phase("prefill");
    RowBatch batch(n_batch_);
    auto check_cancel = [&] { if (s.cancel && s.cancel->set.load()) throw Cancelled{}; };
    for (size_t i = 0; i < n_chunks; ++i) {
        const mtmd_input_chunk* c = mtmd_input_chunks_get(chunks, i);
        bool last_chunk = i + 1 == n_chunks;
        check_cancel();
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n = 0;
            const llama_token* toks = mtmd_input_chunk_get_tokens_text(c, &n);
            auto t0 = std::chrono::steady_clock::now();
            for (size_t off = 0; off < n; off += n_batch_) {
                batch.clear();
                size_t end = std::min(n, off + n_batch_);
                for (size_t j = off; j < end; ++j) batch.add(toks[j], s.n_past++, s.seq, last_chunk && j + 1 == n);
                if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("prompt evaluation failed");
                if (end < n) check_cancel();
            }
            s.result->prefill_ms += ms_since(t0);
        } else {
            size_t n = mtmd_input_chunk_get_n_tokens(c);
            std::vector<float> embd;
            auto t0 = std::chrono::steady_clock::now();
            {
                std::lock_guard<std::mutex> lock(mtmd_mu_);
                if (mtmd_encode_chunk(mctx_, c) != 0) throw engine_error("audio encoding failed");
                const float* e = mtmd_get_output_embd(mctx_);
                embd.assign(e, e + n * static_cast<size_t>(n_embd));
            }
            s.result->encode_ms += ms_since(t0);
            s.result->n_audio_tokens += static_cast<int>(n);
            check_cancel();
            auto t1 = std::chrono::steady_clock::now();
            for (size_t off = 0; off < n; off += n_batch_) {
                batch.clear();
                batch.set_embd(embd.data() + off * n_embd);
                size_t end = std::min(n, off + n_batch_);
                for (size_t j = off; j < end; ++j) batch.add_embd_row(s.n_past++, s.seq);
                if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("decoding the audio embeddings failed");
                if (end < n) check_cancel();
            }
            s.result->prefill_ms += ms_since(t1);
        }
    }
}

// ---------------------------------------------------------------- sampling
SamplerPtr Engine::make_sampler(const SamplingParams& sp) const {
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (sp.repeat_penalty != 1.0f)
        llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(n_vocab(), sp.repeat_last_n, sp.repeat_penalty, 0.0f, 0.0f));
    if (sp.temperature <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
    } else {
        if (sp.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(sp.top_k));
        if (sp.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(sp.top_p, 1));
        llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(sp.temperature));
        llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(sp.seed));
    }
    return chain;
}

void Engine::sample(Slot& s, int row) {
    s.next = llama_sampler_sample(s.sampler.get(), ctx_, row);
    // log-probability of the choice under the raw logits (faster-whisper's avg_logprob);
    // terms below max - 20 add less than 1e-4 in all and are skipped.
    const float* l = llama_get_logits_ith(ctx_, row);
    const int n = n_vocab();
    float mx = l[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, l[i]);
    double sum = 0;
    for (int i = 0; i < n; ++i)
        if (l[i] > mx - 20.0f) sum += std::exp(static_cast<double>(l[i] - mx));
    s.next_logprob = static_cast<double>(l[s.next] - mx) - std::log(sum);
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

// ---------------------------------------------------------------- the loop
void Engine::submit(Request req) {
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
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

void Engine::shutdown() {
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        stop_ = true;
    }
    queue_cv_.notify_all();
}

int Engine::ctx_needed(int n_prompt, int max_new) const {
    return n_prompt + max_new + 1;
}

void Engine::release(Slot& s) {
    llama_memory_seq_rm(llama_get_memory(ctx_), s.seq, -1, -1);
    s.active = false;
    s.sampler.reset();
    s.cancel.reset();
    s.result.reset();
    --n_active_;
    slot_freed_.notify_all();
}

void Engine::finish(Slot& s, const char* reason, std::vector<Event>& events) {
    std::string tail = take_utf8(s.pending, true);
    if (!tail.empty()) {
        s.result->text += tail;
        events.push_back({Event::Piece, s.id, tail, nullptr});
    }
    s.result->stop_reason = reason;
    events.push_back({Event::Done, s.id, std::string(), s.result});
    release(s);
}

// Frees the slots of cancelled requests, so their slots go to waiting work at once.
void Engine::sweep_cancelled(std::vector<Event>& events) {
    for (auto& sp : slots_)
        if (sp->active && sp->cancel && sp->cancel->set.load()) finish(*sp, "cancelled", events);
}

// Admits at most one request into a free slot (encode, prefill, first sample): the loop
// alternates admissions with decode steps, so active sequences keep advancing while a
// queue of new windows is taken in, and a cancel is seen after at most one admission.
void Engine::admit(std::vector<Event>& events) {
    while (true) {
        Slot* slot = nullptr;
        for (auto& s : slots_) if (!s->active) { slot = s.get(); break; }
        if (!slot) return;

        std::unique_ptr<Pending> p;
        if (deferred_) {
            if (n_active_ > 0) return;  // wait for the context to drain, then grow it
            p = std::move(deferred_);
        } else {
            std::lock_guard<std::mutex> lock(queue_mu_);
            if (queue_.empty()) return;
            p = std::make_unique<Pending>();
            p->req = std::move(queue_.front());
            queue_.pop_front();
        }
        Request& req = p->req;
        const SamplingParams& sp = req.params;
        auto result = std::make_shared<Result>();
        if (req.cancel && req.cancel->set.load()) {
            result->stop_reason = "cancelled";
            events.push_back({Event::Done, req.id, std::string(), result});
            continue;
        }
        try {
            auto t0 = std::chrono::steady_clock::now();
            if (!p->chunks) {
                p->chunks = tokenize(req.parts, req.audio);  // computes the log-mel features
                p->n_prompt = static_cast<int>(mtmd_helper_get_n_pos(p->chunks.get()));
            }
            result->encode_ms += ms_since(t0);
            int need = ctx_needed(p->n_prompt, sp.max_new_tokens);
            if (need > n_ctx_seq_ && grow_ctx_ && n_ctx_seq_ < max_ctx_seq_) {
                if (n_active_ > 0) {  // FCFS: nothing is admitted past it; the active ones finish first
                    deferred_ = std::move(p);
                    has_deferred_ = true;
                    return;
                }
                int grown = std::min(max_ctx_seq_, (need + 255) / 256 * 256);
                try {
                    create_context(grown);
                } catch (const std::exception&) {
                    create_context(n_ctx_seq_);  // back to the size that worked
                    throw;
                }
            }
            if (p->n_prompt + 1 > n_ctx_seq_)
                throw std::length_error("the request needs " + std::to_string(p->n_prompt) +
                                        " prompt tokens but a sequence's context holds " + std::to_string(n_ctx_seq_) +
                                        "; use shorter audio windows, a shorter prompt or a larger n_ctx");
        } catch (const std::exception& e) {
            has_deferred_ = deferred_ != nullptr;
            events.push_back({Event::Error, req.id, e.what(), nullptr});
            continue;
        }
        has_deferred_ = deferred_ != nullptr;

        Slot& s = *slot;
        s.active = true;
        ++n_active_;
        s.id = req.id;
        s.cancel = req.cancel;
        s.params = sp;
        s.sampler = make_sampler(sp);
        s.n_past = 0;
        s.pending.clear();
        s.result = result;
        s.result->n_prompt_tokens = p->n_prompt;
        s.max_new = std::min(sp.max_new_tokens, n_ctx_seq_ - p->n_prompt);
        s.ctx_limited = s.max_new < sp.max_new_tokens;
        try {
            prefill(p->chunks.get(), s);
            sample(s, -1);
        } catch (const Cancelled&) {
            finish(s, "cancelled", events);
        } catch (const std::exception& e) {
            events.push_back({Event::Error, s.id, e.what(), nullptr});
            release(s);
        }
        return;
    }
}

void Engine::step(std::vector<Event>& events) {
    RowBatch batch(n_seq_max_);
    std::vector<Slot*> rows;
    for (auto& sp : slots_) {
        Slot& s = *sp;
        if (!s.active) continue;
        if (s.cancel && s.cancel->set.load()) { finish(s, "cancelled", events); continue; }
        if (!s.params.ignore_eos && is_eog(s.next)) { finish(s, "stop", events); continue; }
        s.result->tokens.push_back(s.next);
        s.result->sum_logprob += s.next_logprob;
        s.pending += token_piece(s.next, false);
        std::string piece = take_utf8(s.pending, false);
        if (!piece.empty()) {
            s.result->text += piece;
            events.push_back({Event::Piece, s.id, std::move(piece), nullptr});
        }
        if (static_cast<int>(s.result->tokens.size()) >= s.max_new) {
            finish(s, s.ctx_limited ? "context" : "length", events);
            continue;
        }
        if (looping(s)) { finish(s, "repetition", events); continue; }
        batch.add(s.next, s.n_past++, s.seq, true);
        rows.push_back(&s);
    }
    if (rows.empty()) return;
    auto t0 = std::chrono::steady_clock::now();
    auto phase = placement_.phase("decode");
    if (llama_decode(ctx_, batch.get()) != 0) {
        std::string msg = engine_error("llama_decode failed during generation").what();
        for (Slot* s : rows) {
            events.push_back({Event::Error, s->id, msg, nullptr});
            release(*s);
        }
        return;
    }
    n_decode_steps_.fetch_add(1);
    n_decode_rows_.fetch_add(static_cast<int64_t>(rows.size()));
    for (int64_t m = max_decode_rows_.load(); static_cast<int64_t>(rows.size()) > m;)
        if (max_decode_rows_.compare_exchange_weak(m, static_cast<int64_t>(rows.size()))) break;
    for (size_t r = 0; r < rows.size(); ++r) sample(*rows[r], static_cast<int>(r));
    double share = ms_since(t0) / static_cast<double>(rows.size());  // the step's time, split evenly
    for (Slot* s : rows) s->result->decode_ms += share;
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
    while (true) {
        std::packaged_task<void()> task;
        {
            std::unique_lock<std::mutex> lock(queue_mu_);
            queue_cv_.wait(lock, [&] {
                return stop_ || !queue_.empty() || n_active_ > 0 || has_deferred_ || !tasks_.empty();
            });
            if (stop_) break;
            if (!tasks_.empty()) {
                task = std::move(tasks_.front());
                tasks_.pop_front();
            }
        }
        if (task.valid()) task();  // one posted task per turn, between steps
        {
            std::lock_guard<std::mutex> lock(mu_);
            sweep_cancelled(events);
            admit(events);
        }
        deliver();
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (n_active_ > 0) step(events);
        }
        deliver();
    }
    // Shut down: everything in flight or waiting ends as cancelled.
    {
        std::lock_guard<std::mutex> lock(mu_);
        for (auto& s : slots_) if (s->active) finish(*s, "cancelled", events);
        if (deferred_) {
            auto r = std::make_shared<Result>();
            r->stop_reason = "cancelled";
            events.push_back({Event::Done, deferred_->req.id, std::string(), r});
            deferred_.reset();
            has_deferred_ = false;
        }
    }
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        tasks_.clear();  // never run: their futures report a broken promise
        loop_thread_ = std::thread::id();
        for (auto& req : queue_) {
            auto r = std::make_shared<Result>();
            r->stop_reason = "cancelled";
            events.push_back({Event::Done, req.id, std::string(), r});
        }
        queue_.clear();
    }
    deliver();
}

// ---------------------------------------------------------------- direct calls
std::vector<float> Engine::first_logits(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio) {
    ChunksPtr chunks = tokenize(parts, audio);
    std::unique_lock<std::mutex> lock(mu_);
    Slot* slot = nullptr;
    slot_freed_.wait(lock, [&] {
        for (auto& s : slots_) if (!s->active) { slot = s.get(); return true; }
        return false;
    });
    int n_prompt = static_cast<int>(mtmd_helper_get_n_pos(chunks.get()));
    if (n_prompt + 1 > n_ctx_seq_) {
        if (!grow_ctx_ || n_active_ > 0) throw std::length_error("the prompt does not fit this context");
        create_context(std::min(max_ctx_seq_, (n_prompt + 256) / 256 * 256));
    }
    Slot& s = *slot;
    s.active = true;
    ++n_active_;
    s.n_past = 0;
    s.cancel.reset();
    s.result = std::make_shared<Result>();
    std::vector<float> out;
    try {
        prefill(chunks.get(), s);
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
