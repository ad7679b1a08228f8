// The engine: one LFM2-Audio model (text GGUF + audio mmproj) held in memory, and the
// loop that decodes many requests at once.
//
// Scheduling model (continuous batching): the context has `n_seq_max` sequence slots.
// Requests are submitted from any thread into a FIFO; the loop (`run`, one thread)
// alternates: admit the head of the FIFO into a free slot (encode the audio, prefill the
// prompt, sample the first token), then advance every active sequence with one
// llama_decode. Finished, failed and cancelled sequences free their
// slot at once, so a short request never waits for a long one. Which request to submit
// next is Python's decision (pylfm/scheduler.py); this loop only runs them.
//
// Results go back as events, delivered to a Python callable once per step (one GIL
// acquisition per step, none while computing). Cancellation is an atomic flag per
// request, read at every step and between prefill pieces, without the GIL.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common.h"
#include "ggml-backend.h"
#include "llama.h"
#include "mtmd.h"
#include "placement.h"

namespace pylfm {

struct CancelFlag {
    std::atomic<bool> set{false};
};

struct SamplingParams {
    int max_new_tokens = 512;
    float temperature = 0.0f;  // 0: greedy
    int top_k = 0;
    float top_p = 1.0f;
    uint32_t seed = 0;
    bool ignore_eos = false;
    float repeat_penalty = 1.0f;  // llama.cpp's penalties sampler over the last repeat_last_n tokens
    int repeat_last_n = 64;
    // Repetition-loop guard: stop with "repetition" when the generated tokens end in a block
    // of at most loop_max_period tokens repeated back to back, covering at least
    // max(loop_min_span, loop_min_repeats * period) tokens. 0 = off.
    int loop_max_period = 0;
    int loop_min_repeats = 4;
    int loop_min_span = 20;
};

// One part of a prompt: text (special tokens parsed only when `special`) or an audio clip.
struct PromptPart {
    std::string text;
    bool special = false;
    int audio = -1;  // index into Request::audio, or -1 for text
};

struct Request {
    uint64_t id = 0;
    std::vector<PromptPart> parts;
    std::vector<std::vector<float>> audio;  // mono float32 PCM at the mmproj's rate
    SamplingParams params;
    std::shared_ptr<CancelFlag> cancel;
};

// What a finished request reports (kind Done), or why it failed (kind Error).
struct Result {
    std::string text;
    std::vector<llama_token> tokens;
    std::string stop_reason;  // stop | length | context | repetition | cancelled
    int n_prompt_tokens = 0, n_audio_tokens = 0;
    double encode_ms = 0, prefill_ms = 0, decode_ms = 0;
    double sum_logprob = 0;  // natural-log probability of the generated tokens under the raw logits
};

struct Event {
    enum Kind { Piece = 0, Done = 1, Error = 2 } kind;
    uint64_t id;
    std::string text;        // Piece: the text; Error: the message
    std::shared_ptr<Result> result;  // Done
};

using EventSink = std::function<void(std::vector<Event>&)>;

class Engine {
public:
    // n_ctx_seq: context per sequence; grown on demand (up to the model's training
    // context) when `grow_ctx`, fixed otherwise.
    Engine(const std::string& model_path, const std::string& mmproj_path, int n_threads, const std::string& device,
           int n_ctx_seq, int n_batch, int n_seq_max, bool flash_attn, bool grow_ctx);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // ---- the scheduler loop
    void submit(Request req);   // any thread
    void run(const EventSink& sink);  // blocks until shutdown(); one thread at a time
    void shutdown();

    // Runs `fn` on the loop's thread between steps; the future is ready when it has run
    // (from the loop's own thread it runs at once). All ggml work of a process belongs on
    // one thread: libgomp gives every computing thread its own pool of workers and, once
    // more pool threads exist than CPUs, stops spinning at barriers in every pool, which
    // doubled the time of speech generation on 2 cores when it ran on a second thread.
    std::future<void> post(std::function<void()> fn);

    // ---- direct calls (tests, fidelity): they wait for the loop between steps
    std::vector<llama_token> prompt_tokens(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio);
    std::vector<float> encode_audio(const std::vector<float>& pcm, size_t& n_tokens);
    std::vector<float> first_logits(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio);
    int count_tokens(const std::string& text, bool special) const;

    // ---- facts
    int sample_rate() const { return sample_rate_; }
    int n_vocab() const { return llama_vocab_n_tokens(vocab_); }
    int n_embd() const { return llama_model_n_embd_inp(model_); }
    int n_ctx_seq() const;
    int n_seq_max() const { return n_seq_max_; }
    int max_ctx_seq() const { return max_ctx_seq_; }
    double load_ms() const { return load_ms_; }
    const std::string& device() const { return device_; }
    std::string description() const;
    std::string token_piece(llama_token t, bool special) const;
    bool is_eog(llama_token t) const { return llama_vocab_is_eog(vocab_, t); }

    // ---- for other native parts that run on the same loaded model (speech output)
    llama_model* model() const { return model_; }
    const llama_vocab* vocab() const { return vocab_; }
    mtmd_context* mtmd() const { return mctx_; }
    std::mutex& mtmd_mutex() { return mtmd_mu_; }  // hold it around every mtmd call
    ggml_backend_dev_t gpu() const { return gpu_; }  // nullptr on the CPU
    int n_threads() const { return n_threads_; }
    bool flash_attn() const { return flash_attn_; }
    PlacementRecorder& placement() { return placement_; }  // where ops ran (PYLFM_RECORD_PLACEMENT=1)

    // ---- counters of the generation loop (since load): how much batching really happened
    struct Stats { int64_t decode_steps, decode_rows, max_rows; };
    Stats stats() const { return {n_decode_steps_.load(), n_decode_rows_.load(), max_decode_rows_.load()}; }

private:
    struct Slot;
    struct Pending;

    void create_context(int n_ctx_seq);
    void free_all();
    ChunksPtr tokenize(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio);
    void prefill(const mtmd_input_chunks* chunks, Slot& s);
    void admit(std::vector<Event>& events);
    void sweep_cancelled(std::vector<Event>& events);
    void step(std::vector<Event>& events);
    void finish(Slot& s, const char* reason, std::vector<Event>& events);
    void release(Slot& s);
    SamplerPtr make_sampler(const SamplingParams& sp) const;
    void sample(Slot& s, int row);
    bool looping(const Slot& s) const;
    int ctx_needed(int n_prompt, int max_new) const;

    llama_model* model_ = nullptr;
    llama_context* ctx_ = nullptr;
    mtmd_context* mctx_ = nullptr;
    const llama_vocab* vocab_ = nullptr;
    ggml_backend_dev_t gpu_ = nullptr;
    int n_threads_, n_batch_, n_seq_max_;
    int n_ctx_seq_ = 0, max_ctx_seq_ = 0;
    bool flash_attn_, grow_ctx_;
    int sample_rate_ = 0;
    double load_ms_ = 0;
    std::string device_;
    PlacementRecorder placement_;

    std::mutex mu_;       // the context and the slots: held by the loop while it works
    std::mutex mtmd_mu_;  // mtmd's encoder state
    std::condition_variable slot_freed_;
    std::vector<std::unique_ptr<Slot>> slots_;
    std::unique_ptr<Pending> deferred_;  // admitted next, once the context has grown
    std::atomic<bool> has_deferred_{false};

    std::mutex queue_mu_;
    std::condition_variable queue_cv_;
    std::deque<Request> queue_;
    std::deque<std::packaged_task<void()>> tasks_;  // work posted to the loop's thread
    std::thread::id loop_thread_;
    bool stop_ = false;
    std::atomic<int> n_active_{0};
    std::atomic<int64_t> n_decode_steps_{0}, n_decode_rows_{0}, max_decode_rows_{0};
};

}  // namespace pylfm
