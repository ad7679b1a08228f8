// pylfm._core: the engine loop over llama.cpp's libllama + libmtmd.
//
// It owns exactly what must be native: loading the text model and the mmproj once,
// turning PCM into audio chunks, evaluating them, and the sampling loop (one or
// several sequences decoded together in one context). Python owns audio I/O, the
// prompt text, model resolution, long-form windowing, formats and the CLI.
//
// Threading: every engine call releases the GIL and then takes the Engine's mutex,
// so several Python threads may share one Engine; their requests are serialised
// (one llama context per model). Parallelism inside one call comes from batching
// several requests as separate sequences.

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"
#include "mtmd-helper.h"
#include "mtmd.h"

namespace py = pybind11;

namespace {

// ---------------------------------------------------------------- logging
// llama.cpp and mtmd log from any thread, often with the GIL released, so the
// callback never touches Python: it keeps recent lines in a buffer that Python
// drains into `logging` (pop_log) and that error messages quote.
struct LogSink {
    std::mutex mu;
    std::deque<std::pair<int, std::string>> lines;  // (ggml level, text)
    std::string partial;                            // text of a line still being written
    int partial_level = GGML_LOG_LEVEL_INFO;
    bool echo = false;                              // also print to stderr (verbose)
};
LogSink g_log;

void log_callback(enum ggml_log_level level, const char* text, void*) {
    std::lock_guard<std::mutex> lock(g_log.mu);
    if (g_log.echo) fputs(text, stderr);
    if (level != GGML_LOG_LEVEL_CONT) g_log.partial_level = level;
    g_log.partial += text;
    size_t nl;
    while ((nl = g_log.partial.find('\n')) != std::string::npos) {
        g_log.lines.emplace_back(g_log.partial_level, g_log.partial.substr(0, nl));
        g_log.partial.erase(0, nl + 1);
        if (g_log.lines.size() > 400) g_log.lines.pop_front();
    }
}

// The last warning/error lines, to make exception messages say what llama.cpp saw.
std::string recent_errors(size_t max_lines = 6) {
    std::lock_guard<std::mutex> lock(g_log.mu);
    std::vector<std::string> picked;
    for (auto it = g_log.lines.rbegin(); it != g_log.lines.rend() && picked.size() < max_lines; ++it) {
        if (it->first == GGML_LOG_LEVEL_ERROR || it->first == GGML_LOG_LEVEL_WARN) picked.push_back(it->second);
    }
    std::string out;
    for (auto it = picked.rbegin(); it != picked.rend(); ++it) out += "\n  llama.cpp: " + *it;
    return out;
}

py::list pop_log() {
    std::lock_guard<std::mutex> lock(g_log.mu);
    py::list out;
    for (auto& l : g_log.lines) out.append(py::make_tuple(l.first, l.second));
    g_log.lines.clear();
    return out;
}

void ensure_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        mtmd_log_set(log_callback, nullptr);
        mtmd_helper_log_set(log_callback, nullptr);
        ggml_backend_load_all();  // no-op unless backends were built as loadable modules
        llama_backend_init();
    });
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------- UTF-8
// Token pieces are byte strings that may end inside a multi-byte character.
// Emit only complete characters; replace invalid bytes with U+FFFD so Python
// always receives valid text and the streamed pieces join to the final text.
size_t utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if ((c >> 5) == 0x6) return 2;
    if ((c >> 4) == 0xE) return 3;
    if ((c >> 3) == 0x1E) return 4;
    return 0;  // continuation or invalid lead byte
}

std::string take_utf8(std::string& buf, bool flush) {
    static const std::string kReplacement = "\xEF\xBF\xBD";
    std::string out;
    size_t i = 0;
    while (i < buf.size()) {
        size_t n = utf8_len(static_cast<unsigned char>(buf[i]));
        if (n == 0) { out += kReplacement; i += 1; continue; }
        if (i + n > buf.size()) {
            bool valid_prefix = true;
            for (size_t j = i + 1; j < buf.size(); ++j) valid_prefix &= ((static_cast<unsigned char>(buf[j]) & 0xC0) == 0x80);
            if (!flush && valid_prefix) break;  // wait for the rest of the character
            out += kReplacement; i += 1; continue;
        }
        bool ok = true;
        for (size_t j = i + 1; j < i + n; ++j) ok &= ((static_cast<unsigned char>(buf[j]) & 0xC0) == 0x80);
        if (!ok) { out += kReplacement; i += 1; continue; }
        out.append(buf, i, n);
        i += n;
    }
    buf.erase(0, i);
    return out;
}

// ---------------------------------------------------------------- RAII wrappers
struct ChunksDeleter { void operator()(mtmd_input_chunks* c) const { mtmd_input_chunks_free(c); } };
struct BitmapDeleter { void operator()(mtmd_bitmap* b) const { mtmd_bitmap_free(b); } };
struct SamplerDeleter { void operator()(llama_sampler* s) const { llama_sampler_free(s); } };
using ChunksPtr = std::unique_ptr<mtmd_input_chunks, ChunksDeleter>;
using BitmapPtr = std::unique_ptr<mtmd_bitmap, BitmapDeleter>;
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

struct Request {
    std::string prompt;                       // text with one media marker per audio
    std::vector<std::vector<float>> audio;    // mono float32 PCM at the mmproj's rate
};

struct SamplingParams {
    int max_new_tokens = 512;
    float temperature = 0.0f;
    int top_k = 0;
    float top_p = 1.0f;
    uint32_t seed = 0;
    bool ignore_eos = false;
};

// What one sequence accumulates while it is decoded.
struct Sequence {
    llama_seq_id id = 0;
    llama_pos n_past = 0;
    SamplerPtr sampler;
    llama_token next = -1;
    std::vector<llama_token> tokens;
    std::string text, pending;
    int n_prompt = 0, n_audio = 0;
    double encode_ms = 0, prefill_ms = 0;
    bool done = false;
    std::string stop = "length";
};

std::runtime_error engine_error(const std::string& what) {
    return std::runtime_error(what + recent_errors());
}

}  // namespace

// ---------------------------------------------------------------- Engine
class Engine {
public:
    Engine(const std::string& model_path, const std::string& mmproj_path, int n_threads, std::string device,
           int n_ctx, int n_batch, int n_seq_max, bool flash_attn)
        : n_batch_(n_batch), n_seq_max_(std::max(1, n_seq_max)) {
        ensure_backend();
        auto t0 = std::chrono::steady_clock::now();
        py::gil_scoped_release nogil;
        ggml_backend_dev_t gpu = pick_device(device);

        llama_model_params mp = llama_model_default_params();
        ggml_backend_dev_t devs[2] = {gpu, nullptr};
        if (gpu) { mp.devices = devs; mp.n_gpu_layers = -1; }
        else { mp.n_gpu_layers = 0; }
        model_ = llama_model_load_from_file(model_path.c_str(), mp);
        if (!model_) throw engine_error("could not load the text model '" + model_path + "'");
        vocab_ = llama_model_get_vocab(model_);

        llama_context_params cp = llama_context_default_params();
        cp.n_ctx = static_cast<uint32_t>(n_ctx);
        cp.n_batch = static_cast<uint32_t>(n_batch);
        cp.n_ubatch = static_cast<uint32_t>(n_batch);
        cp.n_seq_max = static_cast<uint32_t>(n_seq_max_);
        // One KV stream per sequence (n_ctx / n_seq_max each): a batched token then attends
        // only to its own sequence's cells, not to every sequence's (masked) cells.
        cp.kv_unified = false;
        cp.n_threads = n_threads;
        cp.n_threads_batch = n_threads;
        cp.no_perf = true;
        cp.flash_attn_type = flash_attn ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        if (!gpu) cp.op_offload = false;  // device="cpu" means no GPU work at all
        ctx_ = llama_init_from_model(model_, cp);
        if (!ctx_) { free_all(); throw engine_error("could not create a llama context (n_ctx=" + std::to_string(n_ctx) + ")"); }

        mtmd_context_params mcp = mtmd_context_params_default();
        mcp.use_gpu = gpu != nullptr;
        mcp.device = gpu;
        mcp.n_threads = n_threads;
        mcp.print_timings = false;
        mcp.warmup = false;
        mcp.flash_attn_type = cp.flash_attn_type;
        mctx_ = mtmd_init_from_file(mmproj_path.c_str(), model_, mcp);
        if (!mctx_) { free_all(); throw engine_error("could not load the mmproj '" + mmproj_path + "' for this text model"); }
        if (!mtmd_support_audio(mctx_)) {
            free_all();
            throw std::invalid_argument("the mmproj '" + mmproj_path + "' has no audio encoder; "
                                        "pass the LFM2-Audio mmproj (mmproj-*.gguf converted from the same checkpoint)");
        }
        sample_rate_ = mtmd_get_audio_sample_rate(mctx_);
        device_ = gpu ? std::string(ggml_backend_dev_name(gpu)) + " (" + ggml_backend_dev_description(gpu) + ")" : "CPU";
        load_ms_ = ms_since(t0);
    }

    ~Engine() { free_all(); }

    int sample_rate() const { return sample_rate_; }
    int n_vocab() const { return llama_vocab_n_tokens(vocab_); }
    int n_embd() const { return llama_model_n_embd_inp(model_); }
    int n_ctx() const { return static_cast<int>(llama_n_ctx(ctx_)); }
    int n_ctx_seq() const { return static_cast<int>(llama_n_ctx_seq(ctx_)); }
    int n_seq_max() const { return n_seq_max_; }
    double load_ms() const { return load_ms_; }
    const std::string& device() const { return device_; }

    std::string model_desc() const {
        char buf[256];
        llama_model_desc(model_, buf, sizeof buf);
        return buf;
    }

    std::string token_piece(llama_token t, bool special) const {
        char buf[256];
        int n = llama_token_to_piece(vocab_, t, buf, sizeof buf, 0, special);
        return n < 0 ? std::string() : std::string(buf, n);
    }

    bool is_eog(llama_token t) const { return llama_vocab_is_eog(vocab_, t); }

    // Token ids of `prompt` with `audio` in place of its markers; audio positions are -1.
    std::vector<llama_token> prompt_tokens(const std::string& prompt, const std::vector<std::vector<float>>& audio) {
        std::lock_guard<std::mutex> lock(mu_);
        ChunksPtr chunks = tokenize(prompt, audio);
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

    // The embeddings the language model receives for one audio clip: (n_tokens, n_embd).
    std::vector<float> encode_audio(const std::vector<float>& pcm, size_t& n_tokens) {
        std::lock_guard<std::mutex> lock(mu_);
        ChunksPtr chunks = tokenize(mtmd_default_marker(), {pcm});
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks.get()); ++i) {
            const mtmd_input_chunk* c = mtmd_input_chunks_get(chunks.get(), i);
            if (mtmd_input_chunk_get_type(c) != MTMD_INPUT_CHUNK_TYPE_AUDIO) continue;
            if (mtmd_encode_chunk(mctx_, c) != 0) throw engine_error("audio encoding failed");
            n_tokens = mtmd_input_chunk_get_n_tokens(c);
            const float* e = mtmd_get_output_embd(mctx_);
            return std::vector<float>(e, e + n_tokens * static_cast<size_t>(n_embd()));
        }
        throw std::runtime_error("the prompt produced no audio chunk");
    }

    // Logits at the first generated position after prefilling `req`.
    std::vector<float> first_logits(const Request& req) {
        std::lock_guard<std::mutex> lock(mu_);
        Sequence s;
        SeqCleanup cleanup{this, 1};
        prefill(req, s);
        const float* l = llama_get_logits_ith(ctx_, -1);
        return std::vector<float>(l, l + n_vocab());
    }

    // Decodes the requests as parallel sequences. `on_piece(i, text)` (with the GIL)
    // receives text as it is generated; returning False stops sequence i.
    py::list generate(const std::vector<Request>& reqs, const SamplingParams& sp, py::object on_piece) {
        if (reqs.empty()) return py::list();
        if (static_cast<int>(reqs.size()) > n_seq_max_)
            throw std::invalid_argument("batch of " + std::to_string(reqs.size()) + " requests exceeds this model's " +
                                        std::to_string(n_seq_max_) + " parallel sequences (Model(batch_size=...))");
        std::vector<Sequence> seqs(reqs.size());
        double decode_ms = 0;
        {
            py::gil_scoped_release nogil;
            std::lock_guard<std::mutex> lock(mu_);
            SeqCleanup cleanup{this, static_cast<int>(reqs.size())};
            for (size_t i = 0; i < reqs.size(); ++i) {
                seqs[i].id = static_cast<llama_seq_id>(i);
                seqs[i].sampler = make_sampler(sp, static_cast<uint32_t>(i));
                prefill(reqs[i], seqs[i]);
                check_interrupt();
                seqs[i].next = llama_sampler_sample(seqs[i].sampler.get(), ctx_, -1);
            }
            // Cap generation so every sequence fits its own KV stream.
            int longest = 0;
            for (auto& s : seqs) longest = std::max(longest, static_cast<int>(s.n_past));
            int room = static_cast<int>(llama_n_ctx_seq(ctx_)) - longest;
            int max_new = std::min(sp.max_new_tokens, std::max(room, 0));

            auto t0 = std::chrono::steady_clock::now();
            llama_batch batch = llama_batch_init(static_cast<int32_t>(seqs.size()), 0, 1);
            struct BatchFree { llama_batch& b; ~BatchFree() { llama_batch_free(b); } } batch_free{batch};
            std::vector<int> active_rows;
            while (true) {
                // Accept each active sequence's sampled token, then decode them together.
                batch.n_tokens = 0;
                active_rows.clear();
                for (size_t i = 0; i < seqs.size(); ++i) {
                    Sequence& s = seqs[i];
                    if (s.done) continue;
                    if (!sp.ignore_eos && is_eog(s.next)) { finish(s, i, "stop", on_piece); continue; }
                    s.tokens.push_back(s.next);
                    s.pending += token_piece(s.next, false);
                    if (!emit(s, i, take_utf8(s.pending, false), on_piece)) { finish(s, i, "cancelled", on_piece); continue; }
                    if (static_cast<int>(s.tokens.size()) >= max_new) {
                        finish(s, i, max_new < sp.max_new_tokens ? "context" : "length", on_piece);
                        continue;
                    }
                    int r = batch.n_tokens++;
                    batch.token[r] = s.next;
                    batch.pos[r] = s.n_past++;
                    batch.n_seq_id[r] = 1;
                    batch.seq_id[r][0] = s.id;
                    batch.logits[r] = 1;
                    active_rows.push_back(static_cast<int>(i));
                }
                if (batch.n_tokens == 0) break;
                if (llama_decode(ctx_, batch) != 0) throw engine_error("llama_decode failed during generation");
                check_interrupt();
                for (int r = 0; r < batch.n_tokens; ++r)
                    seqs[active_rows[r]].next = llama_sampler_sample(seqs[active_rows[r]].sampler.get(), ctx_, r);
            }
            decode_ms = ms_since(t0);
        }
        py::list out;
        for (auto& s : seqs) {
            py::dict d;
            d["text"] = s.text;
            d["tokens"] = s.tokens;
            d["n_prompt_tokens"] = s.n_prompt;
            d["n_audio_tokens"] = s.n_audio;
            d["stop_reason"] = s.stop;
            d["encode_ms"] = s.encode_ms;
            d["prefill_ms"] = s.prefill_ms;
            d["decode_ms"] = decode_ms;
            out.append(d);
        }
        return out;
    }

private:
    // Frees the sequences' KV/recurrent state however a request ends.
    struct SeqCleanup {
        Engine* e;
        int n;
        ~SeqCleanup() {
            llama_memory_t mem = llama_get_memory(e->ctx_);
            for (int i = 0; i < n; ++i) llama_memory_seq_rm(mem, i, -1, -1);
        }
    };

    static ggml_backend_dev_t pick_device(const std::string& device) {
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
            std::string reg = ggml_backend_reg_name(ggml_backend_dev_backend_reg(d));
            std::string reg_lower;
            for (char c : reg) reg_lower += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            available.push_back(reg_lower);
            if (kind == "auto" || kind == "gpu" || kind == reg_lower) {
                if (seen++ == want) return d;
            }
        }
        if (kind == "auto") return nullptr;
        std::string have;
        for (auto& a : available) have += (have.empty() ? "" : ", ") + a;
        throw std::invalid_argument("device '" + device + "' is not available in this build (GPU devices: " +
                                    (have.empty() ? std::string("none") : have) + ")");
    }

    SamplerPtr make_sampler(const SamplingParams& sp, uint32_t offset) const {
        SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
        if (sp.temperature <= 0.0f) {
            llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        } else {
            if (sp.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(sp.top_k));
            if (sp.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(sp.top_p, 1));
            llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(sp.temperature));
            llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(sp.seed + offset));
        }
        return chain;
    }

    ChunksPtr tokenize(const std::string& prompt, const std::vector<std::vector<float>>& audio) {
        std::vector<BitmapPtr> bitmaps;
        std::vector<const mtmd_bitmap*> raw;
        for (auto& pcm : audio) {
            bitmaps.emplace_back(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
            if (!bitmaps.back()) throw engine_error("could not prepare the audio");
            raw.push_back(bitmaps.back().get());
        }
        ChunksPtr chunks(mtmd_input_chunks_init());
        mtmd_input_text text{prompt.c_str(), prompt.size(), /*add_special=*/true, /*parse_special=*/true};
        int32_t rc = mtmd_tokenize(mctx_, chunks.get(), &text, raw.data(), raw.size());
        if (rc == 1) throw std::invalid_argument("the prompt has a different number of audio markers than audio clips");
        if (rc != 0) throw engine_error("could not turn the audio into model input (too short or unsupported)");
        return chunks;
    }

    // Evaluates the prompt (text and audio chunks) into sequence s; logits of its last token stay available.
    void prefill(const Request& req, Sequence& s) {
        ChunksPtr chunks = tokenize(req.prompt, req.audio);
        size_t n_chunks = mtmd_input_chunks_size(chunks.get());
        size_t total = mtmd_helper_get_n_tokens(chunks.get());
        if (static_cast<int>(total) + 1 > static_cast<int>(llama_n_ctx_seq(ctx_)))
            throw std::length_error("the request needs " + std::to_string(total) + " prompt tokens but a sequence's context holds " +
                                    std::to_string(llama_n_ctx_seq(ctx_)) + "; use shorter audio windows or a larger n_ctx");
        if (n_chunks == 0 || mtmd_input_chunk_get_type(mtmd_input_chunks_get(chunks.get(), n_chunks - 1)) != MTMD_INPUT_CHUNK_TYPE_TEXT)
            throw std::invalid_argument("the prompt must end with text after the audio marker");
        s.n_prompt = static_cast<int>(total);
        for (size_t i = 0; i < n_chunks; ++i) {
            const mtmd_input_chunk* c = mtmd_input_chunks_get(chunks.get(), i);
            bool last = i + 1 == n_chunks;
            llama_pos new_n_past = s.n_past;
            if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
                auto t0 = std::chrono::steady_clock::now();
                if (mtmd_helper_eval_chunk_single(mctx_, ctx_, c, s.n_past, s.id, n_batch_, last, &new_n_past) != 0)
                    throw engine_error("prompt evaluation failed");
                s.prefill_ms += ms_since(t0);
            } else {
                auto t0 = std::chrono::steady_clock::now();
                if (mtmd_encode_chunk(mctx_, c) != 0) throw engine_error("audio encoding failed");
                s.encode_ms += ms_since(t0);
                s.n_audio += static_cast<int>(mtmd_input_chunk_get_n_tokens(c));
                auto t1 = std::chrono::steady_clock::now();
                if (mtmd_helper_decode_image_chunk(mctx_, ctx_, c, mtmd_get_output_embd(mctx_), s.n_past, s.id, n_batch_,
                                                   &new_n_past, nullptr, nullptr) != 0)
                    throw engine_error("decoding the audio embeddings failed");
                s.prefill_ms += ms_since(t1);
            }
            s.n_past = new_n_past;
        }
    }

    bool emit(Sequence& s, size_t i, const std::string& piece, py::object& on_piece) {
        if (piece.empty()) return true;
        s.text += piece;
        if (on_piece.is_none()) return true;
        py::gil_scoped_acquire gil;
        py::object r = on_piece(i, piece);
        return !(py::isinstance<py::bool_>(r) && !r.cast<bool>());
    }

    void finish(Sequence& s, size_t i, const char* reason, py::object& on_piece) {
        emit(s, i, take_utf8(s.pending, true), on_piece);
        s.done = true;
        s.stop = reason;
    }

    // Lets Ctrl-C (or any pending Python signal handler exception) stop a long request.
    static void check_interrupt() {
        py::gil_scoped_acquire gil;
        if (PyErr_CheckSignals() != 0) throw py::error_already_set();
    }

    void free_all() {
        if (mctx_) { mtmd_free(mctx_); mctx_ = nullptr; }
        if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }
        if (model_) { llama_model_free(model_); model_ = nullptr; }
    }

    llama_model* model_ = nullptr;
    llama_context* ctx_ = nullptr;
    mtmd_context* mctx_ = nullptr;
    const llama_vocab* vocab_ = nullptr;
    int n_batch_, n_seq_max_;
    int sample_rate_ = 0;
    double load_ms_ = 0;
    std::string device_;
    std::mutex mu_;
};

// ---------------------------------------------------------------- module functions
namespace {

std::vector<float> to_pcm(const py::array_t<float, py::array::c_style | py::array::forcecast>& a) {
    if (a.ndim() != 1) throw std::invalid_argument("audio must be a 1-D float32 array");
    return std::vector<float>(a.data(), a.data() + a.size());
}

std::vector<Request> to_requests(const py::list& items) {
    // items: [(prompt: str, [pcm, ...]), ...]
    std::vector<Request> reqs;
    for (auto item : items) {
        auto t = item.cast<py::tuple>();
        Request r;
        r.prompt = t[0].cast<std::string>();
        for (auto a : t[1].cast<py::list>()) r.audio.push_back(to_pcm(a.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>()));
        reqs.push_back(std::move(r));
    }
    return reqs;
}

py::dict system_info() {
    ensure_backend();
    py::list backends, devices;
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) backends.append(std::string(ggml_backend_reg_name(ggml_backend_reg_get(i))));
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        py::dict dd;
        dd["name"] = std::string(ggml_backend_dev_name(d));
        dd["description"] = std::string(ggml_backend_dev_description(d));
        dd["backend"] = std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(d)));
        auto t = ggml_backend_dev_type(d);
        dd["type"] = t == GGML_BACKEND_DEVICE_TYPE_CPU ? "cpu" : t == GGML_BACKEND_DEVICE_TYPE_ACCEL ? "accel" : "gpu";
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(d, &free_b, &total_b);
        dd["memory_total"] = total_b;
        devices.append(dd);
    }
    py::dict out;
    out["backends"] = backends;
    out["devices"] = devices;
    out["gpu_offload"] = llama_supports_gpu_offload();
    out["llama_system_info"] = std::string(llama_print_system_info());
    return out;
}

void quantize(const std::string& src, const std::string& dst, int ftype, int n_threads) {
    ensure_backend();
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = static_cast<llama_ftype>(ftype);
    p.nthread = n_threads;
    uint32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = llama_model_quantize(src.c_str(), dst.c_str(), &p);
    }
    if (rc != 0) throw engine_error("quantizing '" + src + "' failed");
}

void set_verbose(bool on) {
    ensure_backend();
    std::lock_guard<std::mutex> lock(g_log.mu);
    g_log.echo = on;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pylfm native core: LFM2-Audio inference over llama.cpp's libllama + libmtmd";

    py::class_<SamplingParams>(m, "SamplingParams")
        .def(py::init<>())
        .def_readwrite("max_new_tokens", &SamplingParams::max_new_tokens)
        .def_readwrite("temperature", &SamplingParams::temperature)
        .def_readwrite("top_k", &SamplingParams::top_k)
        .def_readwrite("top_p", &SamplingParams::top_p)
        .def_readwrite("seed", &SamplingParams::seed)
        .def_readwrite("ignore_eos", &SamplingParams::ignore_eos);

    py::class_<Engine>(m, "Engine")
        .def(py::init<const std::string&, const std::string&, int, std::string, int, int, int, bool>(),
             py::arg("model"), py::arg("mmproj"), py::arg("n_threads"), py::arg("device"), py::arg("n_ctx"),
             py::arg("n_batch"), py::arg("n_seq_max"), py::arg("flash_attn"))
        .def_property_readonly("sample_rate", &Engine::sample_rate)
        .def_property_readonly("n_vocab", &Engine::n_vocab)
        .def_property_readonly("n_embd", &Engine::n_embd)
        .def_property_readonly("n_ctx", &Engine::n_ctx)
        .def_property_readonly("n_ctx_seq", &Engine::n_ctx_seq)
        .def_property_readonly("n_seq_max", &Engine::n_seq_max)
        .def_property_readonly("load_ms", &Engine::load_ms)
        .def_property_readonly("device", &Engine::device)
        .def_property_readonly("description", &Engine::model_desc)
        .def("token_piece", [](const Engine& e, int token, bool special) { return py::bytes(e.token_piece(token, special)); },
             py::arg("token"), py::arg("special") = true)
        .def("is_eog", &Engine::is_eog)
        .def("prompt_tokens", [](Engine& e, const std::string& prompt, const py::list& audio) {
            std::vector<std::vector<float>> pcm;
            for (auto a : audio) pcm.push_back(to_pcm(a.cast<py::array_t<float, py::array::c_style | py::array::forcecast>>()));
            py::gil_scoped_release nogil;
            return e.prompt_tokens(prompt, pcm);
        })
        .def("encode_audio", [](Engine& e, py::array_t<float, py::array::c_style | py::array::forcecast> a) {
            std::vector<float> pcm = to_pcm(a);
            size_t n = 0;
            std::vector<float> embd;
            {
                py::gil_scoped_release nogil;
                embd = e.encode_audio(pcm, n);
            }
            py::array_t<float> out({static_cast<py::ssize_t>(n), static_cast<py::ssize_t>(e.n_embd())});
            std::memcpy(out.mutable_data(), embd.data(), embd.size() * sizeof(float));
            return out;
        })
        .def("first_logits", [](Engine& e, const py::list& request) {
            std::vector<Request> reqs = to_requests(request);
            if (reqs.size() != 1) throw std::invalid_argument("first_logits takes one request");
            std::vector<float> l;
            {
                py::gil_scoped_release nogil;
                l = e.first_logits(reqs[0]);
            }
            py::array_t<float> out(static_cast<py::ssize_t>(l.size()));
            std::memcpy(out.mutable_data(), l.data(), l.size() * sizeof(float));
            return out;
        })
        .def("generate", [](Engine& e, const py::list& requests, const SamplingParams& sp, py::object on_piece) {
            return e.generate(to_requests(requests), sp, std::move(on_piece));
        }, py::arg("requests"), py::arg("params"), py::arg("on_piece") = py::none());

    m.def("system_info", &system_info, "Compiled-in backends and visible devices.");
    m.def("quantize", &quantize, py::arg("src"), py::arg("dst"), py::arg("ftype"), py::arg("n_threads") = 0,
          "Quantize a text-model GGUF with llama_model_quantize.");
    m.def("set_verbose", &set_verbose, "Echo llama.cpp's log to stderr.");
    m.def("pop_log", &pop_log, "Drain buffered (level, line) log records.");
    m.def("media_marker", [] { return std::string(mtmd_default_marker()); });
}
