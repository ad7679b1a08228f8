// Speech output for LFM2.5-Audio on the ASR engine's loaded backbone.
//
// Per generated step the backbone (libllama, its own context on the Engine's llama_model)
// either samples a text token from its logits or, in audio mode, hands its last hidden
// state to the audio head: the depthformer, an RQ-transformer run as a ggml graph that
// emits one code per codebook (8), each conditioned on the previous one. The frame's
// codes go back into the backbone as the sum of their audio embeddings, and forward to
// the audio detokenizer (an LFM2 model with sliding-window attention that libllama
// loads itself, n_embd_out 1282): 6 spectrogram frames per code frame, which Python
// turns into 24 kHz audio (inverse STFT). Everything the detokenizer does is causal,
// so it runs frame by frame with its own cache and streams.
//
// Files: the vocoder GGUF (depthformer, depth_linear, depth_embeddings, audio_embedding,
// the detokenizer's code embedding emb.emb) and the tokenizer GGUF (the detokenizer's
// LFM2), laid out as LiquidAI's LFM2.5-Audio-1.5B-GGUF files.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "engine.h"
#include "ggml-backend.h"
#include "ggml.h"
#include "llama.h"

namespace pybind11 { class module_; }

namespace pylfm {

constexpr int kCodebooks = 8;
constexpr int kEndOfAudio = 2048;       // code 2048: end of audio (codebook 0 decides)
constexpr int kUpsample = 6;            // detokenizer frames per code frame
constexpr llama_token kImStart = 6;     // <|im_start|>
constexpr llama_token kImEnd = 7;       // <|im_end|>
constexpr llama_token kAudioStart = 128;  // <|audio_start|>
constexpr llama_token kTextEnd = 130;   // <|text_end|>

using Frame = std::array<int32_t, kCodebooks>;

struct SpeechParams {
    bool interleaved = false;  // liquid-audio's generate_interleaved (else generate_sequential)
    bool start_audio = false;  // the prompt ends with <|audio_start|>: the first step is an audio frame
    bool stop_at_audio_end = false;  // end at the end-of-audio frame (text-to-speech wants nothing after it)
    bool ignore_audio_end = false;   // benchmarks: an end-of-audio code is an ordinary frame (fixed work)
    int max_new_tokens = 2048;  // steps: text tokens + audio frames
    int max_audio_frames = -1;  // -1: no limit of its own
    float text_temperature = 0.0f;  // <= 0: greedy
    int text_top_k = 0;
    float audio_temperature = 0.0f;
    int audio_top_k = 0;
    uint32_t seed = 0;
    int n_text = 6, n_audio = 12;  // the interleaved pattern
    bool detokenize = true;
};

// One generated step, handed to the sink as it happens.
struct SpeechEvent {
    enum Kind { Text = 0, Audio = 1, AudioEnd = 2 } kind;
    std::string text;                 // Text: the decoded piece (may be empty for special tokens)
    llama_token token = -1;           // Text
    Frame codes{};                    // Audio / AudioEnd
    std::vector<float> spectrum;      // Audio: kUpsample x n_spec (log-magnitudes, then phases); empty if not detokenized
};

struct SpeechResult {
    std::string text;
    std::vector<llama_token> tokens;
    std::vector<Frame> frames;  // audio frames, without the end-of-audio frame
    std::string stop_reason;    // stop | audio_end | length | context | cancelled
    int n_prompt_tokens = 0;
    double encode_ms = 0, prefill_ms = 0, backbone_ms = 0, depth_ms = 0, detok_ms = 0;
};

using SpeechSink = std::function<void(SpeechEvent&)>;

class SpeechEngine {
public:
    // Runs on `engine`'s loaded backbone (and its mmproj for audio input): the backbone is
    // not loaded again. Loads the vocoder GGUF's audio head and the detokenizer GGUF.
    SpeechEngine(Engine& engine, const std::string& vocoder_path, const std::string& detokenizer_path);
    ~SpeechEngine();
    SpeechEngine(const SpeechEngine&) = delete;
    SpeechEngine& operator=(const SpeechEngine&) = delete;

    // Generates one answer; blocks; one generation at a time (others wait).
    SpeechResult generate(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio,
                          const SpeechParams& params, const SpeechSink& sink, const std::shared_ptr<CancelFlag>& cancel);

    // ---- probes (tests, fidelity)
    // Depthformer logits (codebooks x audio vocab) for a backbone hidden state, each codebook
    // conditioned on the given codes of the previous ones (teacher forcing).
    std::vector<float> depth_logits(const std::vector<float>& hidden, const Frame& codes);
    Frame sample_frame(const std::vector<float>& hidden, float temperature, int top_k, uint32_t seed);
    std::vector<float> frame_embedding(const Frame& codes);        // backbone input (n_embd)
    std::vector<float> detokenize(const std::vector<Frame>& frames);  // (kUpsample*T) x n_spec, fresh state

    // ---- facts
    int n_codebooks() const { return kCodebooks; }
    int audio_vocab() const { return n_audio_vocab_; }
    int depth_layers() const { return n_layer_; }
    int depth_dim() const { return dim_; }
    int n_spec() const { return n_spec_; }
    int detok_window() const { return detok_window_; }
    double load_ms() const { return load_ms_; }

private:
    struct Layer {
        ggml_tensor *attn_norm, *wqkv, *q_norm, *k_norm, *wo, *ffn_norm, *w1, *w2, *w3, *k_cache, *v_cache;
    };
    struct CodebookHead {
        ggml_tensor *embd, *norm, *to_logits;
    };

    void load_vocoder(const std::string& path);
    ggml_backend_buffer_type_t matrix_buft(ggml_type type, int64_t ne0, int64_t ne1) const;
    void load_detokenizer(const std::string& path);
    void make_context(int n_ctx);
    void free_all();

    // the ggml graphs of the audio head, built once
    struct StaticGraph;
    std::unique_ptr<StaticGraph> new_graph() const;
    void allocate(StaticGraph& g) const;
    void compute(StaticGraph& g);
    std::unique_ptr<StaticGraph> build_step(int j);
    std::vector<float> depth_step(const float* hidden, int j, int prev_code);  // logits of codebook j
    Frame run_frame(const float* hidden, const Frame* forced, llama_sampler* smpl, std::vector<float>* logits_out);
    void embed_frame(const Frame& codes, std::vector<float>& backbone_in, std::vector<float>* detok_in);
    void detok_frame(const std::vector<float>& detok_in, int n_frames, std::vector<float>& spectrum);
    size_t prefill_prefix(const llama_token* toks, size_t n, RowBatch& batch);

    Engine& engine_;
    llama_model* model_;  // the backbone (the Engine's)
    int n_embd_;

    // backbone context for speech (embeddings output switched on in audio mode)
    llama_context* ctx_ = nullptr;
    int n_ctx_ = 0;
    std::vector<llama_token> prefix_tokens_;  // the system turn whose state is kept
    std::vector<uint8_t> prefix_state_;

    // audio head
    int n_layer_ = 0, dim_ = 0, head_dim_ = 0, n_head_ = 32, n_head_kv_ = 8, n_audio_vocab_ = 0;
    float eps_ = 1e-5f, rope_base_ = 1e6f;
    std::vector<Layer> layers_;
    std::vector<CodebookHead> heads_;
    std::vector<ggml_tensor*> depth_ws_;  // depth_linear, one slice per codebook
    ggml_tensor *depth_b_ = nullptr, *audio_embd_ = nullptr, *detok_embd_ = nullptr;
    ggml_context* wctx_ = nullptr;
    ggml_context* mmctx_ = nullptr;  // the matrices (a repacked buffer on the CPU)
    ggml_context* cache_ctx_ = nullptr;
    ggml_backend_buffer_t wbuf_ = nullptr, mmbuf_ = nullptr, cache_buf_ = nullptr;
    std::vector<ggml_backend_t> backends_;  // the device the weights are on first (GPU or CPU), then the CPU
    std::vector<std::unique_ptr<StaticGraph>> steps_;  // one per codebook
    std::unique_ptr<StaticGraph> embed_;

    // detokenizer
    llama_model* detok_model_ = nullptr;
    llama_context* detok_ctx_ = nullptr;
    int detok_embd_n_ = 0, n_spec_ = 0, detok_window_ = 0;
    int detok_pos_ = 0;

    std::mutex mu_;  // one generation (or probe) at a time
    double load_ms_ = 0;
};

void register_speech(pybind11::module_& m);

}  // namespace pylfm
