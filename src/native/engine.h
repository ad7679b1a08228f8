// The engine: one LFM2-Audio model (text GGUF + audio mmproj, optionally the speech
// GGUFs) held in memory, and the loop that advances every request at once.
//
// Scheduling model (continuous batching): the context has `n_slots` sequence slots.
// Requests are submitted from any thread into a FIFO. Each turn the loop (`run`, one
// thread) runs at most one posted task, frees cancelled slots, takes in new work (the
// head of the FIFO: its prompt is tokenized and its audio encoded, then prefilled in
// slices so that generating sequences never wait long), and advances every generating
// sequence with ONE llama_decode: text rows (transcription, the text of speech) and audio
// rows (a speech sequence's last frame, as an embedding) together. The rows that need an
// audio frame then go through the audio head together (SpeechHead). Finished, failed and
// cancelled sequences free their slot at once. Which request to submit next is Python's
// decision (pylfm's scheduler); this loop only runs them.
//
// Sessions (live conversations) own a slot for their lifetime: their sequence keeps its
// history between requests, so a request in a session only prefills what is new. At the
// start of each reply the session's recurrent state is checkpointed (LFM2's short-conv
// layers cannot drop a sequence's tail), so a reply cut short can be rolled back and its
// played part prefilled again (barge-in).
//
// Results go back as events, delivered to a Python callable once per turn (one GIL
// acquisition per turn, none while computing). Cancellation is an atomic flag per request,
// read at every step and between prefill slices, without the GIL.
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
#include "cpu_weights.h"
#include "ggml-backend.h"
#include "limits.h"
#include "llama.h"
#include "mtmd.h"
#include "placement.h"
#include "sampling.h"
#include "speech.h"
#include "token_embd.h"

namespace pylfm {

struct CancelFlag {
    std::atomic<bool> set{false};
};

// Text generation (transcription, and the text of speech requests).
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

// Speech generation (liquid-audio's generate_sequential / generate_interleaved).
struct SpeechParams {
    bool interleaved = false;        // fixed pattern of n_text text tokens and n_audio frames
    bool start_audio = false;        // the prompt ends with <|audio_start|>: the first step is an audio frame
    bool stop_at_audio_end = false;  // end at the end-of-audio frame (text-to-speech wants nothing after it)
    bool ignore_audio_end = false;   // benchmarks: an end-of-audio code is an ordinary frame (fixed work)
    int max_new_tokens = 2048;       // steps: text tokens + audio frames
    int max_audio_frames = -1;       // -1: no limit of its own
    float text_temperature = 0.0f;   // <= 0: greedy
    int text_top_k = 0;
    float audio_temperature = 0.0f;
    int audio_top_k = 0;
    uint32_t seed = 0;
    int n_text = 6, n_audio = 12;
    bool detokenize = true;
};

// One part of a prompt.
struct PromptPart {
    enum Kind { Text = 0, Audio = 1, Tokens = 2, Frames = 3 } kind = Text;
    std::string text;                 // Text (special tokens parsed only when `special`)
    bool special = false;
    int audio = -1;                   // Audio: index into Request::audio (PCM at the mmproj's rate)
    std::vector<llama_token> tokens;  // Tokens: ids as they are (an assistant's earlier text)
    std::vector<Frame> frames;        // Frames: audio frames the model produced (an assistant's earlier speech)
};

struct Request {
    uint64_t id = 0;
    bool speech = false;  // generate speech (SpeechParams) instead of text (SamplingParams)
    int session = -1;     // >= 0: run in that session's sequence, after its history
    std::vector<PromptPart> parts;
    std::vector<std::vector<float>> audio;
    SamplingParams params;
    SpeechParams speech_params;
    std::shared_ptr<CancelFlag> cancel;
};

// What a finished request reports (kind Done).
struct Result {
    std::string text;
    std::vector<llama_token> tokens;
    std::vector<Frame> frames;        // speech: audio frames, without the end-of-audio frame
    std::vector<uint8_t> order;       // speech: 0 = text token, 1 = audio frame (incl. end of audio), in generation order
    int n_fed = 0;                    // speech: how many of the generated items the sequence has consumed
    std::string stop_reason;          // stop | length | context | repetition | cancelled | audio_end
    int n_prompt_tokens = 0, n_audio_tokens = 0;
    int n_past = 0;                   // positions in the sequence afterwards (sessions: the history's length)
    bool turn_taken = false;          // the whole prompt went in (a cancel before that leaves a session as it was)
    double encode_ms = 0, prefill_ms = 0, decode_ms = 0, depth_ms = 0, detok_ms = 0;
    double sum_logprob = 0;  // natural-log probability of the generated tokens under the raw logits
};

struct Event {
    enum Kind { Piece = 0, Done = 1, Error = 2, Audio = 3 } kind;
    uint64_t id;
    std::string text;                 // Piece: the text; Error: the message
    llama_token token = -1;           // Piece: the token it came from
    Frame codes{};                    // Audio
    bool audio_end = false;           // Audio: the end-of-audio frame
    std::vector<float> spectrum;      // Audio: kUpsample x n_spec rows; empty when not detokenized
    std::shared_ptr<Result> result;   // Done
};

using EventSink = std::function<void(std::vector<Event>&)>;

class Engine {
public:
    // n_ctx_seq: context per sequence; grown on demand (up to the model's training
    // context) when `grow_ctx`, fixed otherwise. n_slots: sequences decoded at once
    // (requests and sessions together).
    Engine(const std::string& model_path, const std::string& mmproj_path, int n_threads, const std::string& device,
           int n_ctx_seq, int n_batch, int n_slots, bool flash_attn, bool grow_ctx,
           const std::string& cpu_repack = "");  // CPU weight placement policy, see cpu_weights.h
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // ---- the scheduler loop
    void submit(Request req);         // any thread
    void run(const EventSink& sink);  // blocks until shutdown(); one thread at a time
    void shutdown();
    // Runs `fn` on the loop's thread between steps; the future is ready when it has run
    // (from the loop's own thread it runs at once). All ggml work of a process belongs on
    // one thread: libgomp gives every computing thread its own pool of workers and, once
    // more pool threads exist than CPUs, stops spinning at barriers in every pool, which
    // doubled the time of speech generation on 2 cores when it ran on a second thread.
    std::future<void> post(std::function<void()> fn);
    // Why the loop stopped, if it failed (empty while it runs or after a clean shutdown).
    std::string failure() const;
    // Tests: the loop fails at its next turn, as an internal error (a bug) would make it.
    void inject_failure();

    // ---- sessions (call from the loop's thread, e.g. through post)
    int open_session();                 // reserves a slot; -1 when none is free
    void close_session(int session);    // frees its sequence (its running request is cancelled)
    void rollback_session(int session); // back to the checkpoint taken at the start of its last reply
    void reset_session(int session);    // empty history
    void undo_turn(int session);        // back to before the session's last request took its prompt in
    int session_n_past(int session) const;
    bool session_busy(int session) const;

    // ---- speech output on this model's backbone (from the loop's thread)
    void load_speech(const std::string& vocoder_path, const std::string& detokenizer_path);
    SpeechHead* speech() { return speech_.get(); }

    // ---- direct calls (tests, fidelity); from the loop's thread
    std::vector<llama_token> prompt_tokens(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio);
    std::vector<float> encode_audio(const std::vector<float>& pcm, size_t& n_tokens);
    std::vector<float> first_logits(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio);
    int count_tokens(const std::string& text, bool special) const;
    std::vector<llama_token> tokenize_text(const std::string& text, bool special) const;

    // ---- facts
    int sample_rate() const { return sample_rate_; }
    int n_vocab() const { return llama_vocab_n_tokens(vocab_); }
    int n_embd() const { return llama_model_n_embd_inp(model_); }
    int n_ctx_seq() const { return n_ctx_seq_; }
    int n_slots() const { return n_slots_; }
    int max_ctx_seq() const { return max_ctx_seq_; }
    double load_ms() const { return load_ms_; }
    const std::string& device() const { return device_; }
    std::string description() const;
    std::string token_piece(llama_token t, bool special) const;
    bool is_eog(llama_token t) const { return llama_vocab_is_eog(vocab_, t); }
    PlacementRecorder& placement() { return placement_; }  // where ops ran (PYLFM_RECORD_PLACEMENT=1)
    const CpuWeights& cpu_weights() const { return cpu_weights_; }  // where the weights went on the CPU

    // ---- counters of the generation loop (since load): how much batching really happened
    struct Stats { int64_t decode_steps, decode_rows, max_rows, audio_rows, text_rows; };
    Stats stats() const {
        return {n_decode_steps_.load(), n_decode_rows_.load(), max_decode_rows_.load(), n_audio_rows_.load(),
                n_text_rows_.load()};
    }

private:
    struct Slot;
    struct Prompt;

    void create_context(int n_ctx_seq);
    void grow_context(int n_ctx_seq);
    void free_all();
    Prompt tokenize(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio, bool add_special);
    void encode(Prompt& p, double& encode_ms);
    bool prefill_some(Slot& s, int budget);
    void take_in(std::vector<Event>& events);
    bool start(Slot& s, std::vector<Event>& events);
    void sweep_cancelled(std::vector<Event>& events);
    void cancel_slot(Slot& s, std::vector<Event>& events);
    void step(std::vector<Event>& events);
    bool decode_rows(const std::vector<Slot*>& rows, bool hidden, std::vector<Event>& events);
    void after_text_row(Slot& s, const float* logits, std::vector<Event>& events);
    void finish(Slot& s, const char* reason, std::vector<Event>& events);
    void fail(Slot& s, const std::string& message, std::vector<Event>& events);
    void release(Slot& s);
    bool looping(const Slot& s) const;
    Slot* free_slot();
    Slot& session_slot(int session) const;
    void checkpoint(Slot& s);
    int generating() const;
    bool prefilling() const;

    llama_model* model_ = nullptr;
    llama_context* ctx_ = nullptr;
    mtmd_context* mctx_ = nullptr;
    const llama_vocab* vocab_ = nullptr;
    ggml_backend_dev_t gpu_ = nullptr;
    std::string model_path_;
    int n_threads_, n_batch_, n_slots_;
    int n_ctx_seq_ = 0, max_ctx_seq_ = 0;
    bool flash_attn_, grow_ctx_, f32_cache_ = false;
    bool embeddings_on_ = false;
    int sample_rate_ = 0;
    double load_ms_ = 0;
    std::string device_;
    PlacementRecorder placement_;
    CpuWeights cpu_weights_;
    TokenEmbeddings token_embd_;
    std::unique_ptr<SpeechHead> speech_;

    std::vector<std::unique_ptr<Slot>> slots_;  // n_slots_ + 1: the last one belongs to the probes
    std::unique_ptr<Request> waiting_;          // taken from the queue, waiting for the context to grow

    mutable std::mutex queue_mu_;
    std::condition_variable queue_cv_;
    std::deque<Request> queue_;
    std::deque<std::packaged_task<void()>> tasks_;  // work posted to the loop's thread
    std::thread::id loop_thread_;
    bool stop_ = false;
    std::string failure_;
    std::atomic<int> n_busy_{0};  // slots with a request (prefilling or generating)
    std::atomic<bool> inject_failure_{false};
    std::atomic<int64_t> n_decode_steps_{0}, n_decode_rows_{0}, max_decode_rows_{0}, n_audio_rows_{0}, n_text_rows_{0};
};

}  // namespace pylfm
