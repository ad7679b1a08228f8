// The audio head of LFM2.5-Audio: what turns the backbone's hidden state into speech.
//
// In an audio step the engine hands the backbone's last hidden state of every sequence
// that needs a frame to the depthformer, an RQ-transformer run as ggml graphs here that
// emits one code per codebook (8), each conditioned on the previous one; all those
// sequences go through it together (one graph per codebook for a batch of B rows). A
// frame's codes go back into the backbone as the sum of their audio embeddings, and
// forward to the audio detokenizer (an LFM2 model with sliding-window attention that
// libllama loads: n_embd_out 1282 spectrogram values, 6 rows per frame), which keeps one
// sequence per engine slot and advances every sequence's frame in one llama_decode.
// Python turns the rows into 24 kHz audio (inverse STFT). Everything is causal, so it
// streams frame by frame.
//
// Files: the vocoder GGUF (depthformer, depth_linear, depth_embeddings, audio_embedding,
// the detokenizer's code embedding emb.emb) and the tokenizer GGUF (the detokenizer's
// LFM2), laid out as LiquidAI's LFM2.5-Audio-1.5B-GGUF files.
//
// Not thread-safe: the engine calls it from its loop's thread only.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml.h"
#include "cpu_weights.h"
#include "limits.h"
#include "llama.h"

namespace pylfm {

class SpeechHead {
public:
    // `backbone`: the loaded text model (its width); `gpu`: where the weights go (nullptr:
    // CPU); `n_seqs`: detokenizer sequences (one per engine slot, plus one for probes);
    // `cpu_repack`: the text model's CPU weight placement policy (cpu_weights.h), applied
    // to the depthformer's matrices and the detokenizer alike.
    SpeechHead(llama_model* backbone, ggml_backend_dev_t gpu, int n_threads, int n_seqs, const std::string& vocoder_path,
               const std::string& detokenizer_path, const std::string& cpu_repack = "");
    ~SpeechHead();
    SpeechHead(const SpeechHead&) = delete;
    SpeechHead& operator=(const SpeechHead&) = delete;

    // ---- one step for B sequences (rows of `hidden`: n_embd floats each)
    // Samples each row's frame with its sampler (nullptr: greedy), or takes `forced` codes;
    // `logits_out` (if given) receives every codebook's logits, B x 8 x audio_vocab.
    void frames(const float* hidden, int B, llama_sampler* const* samplers, const Frame* forced, Frame* out,
                std::vector<float>* logits_out = nullptr);
    // The backbone's input for each frame (its codes' audio embeddings summed: B x n_embd)
    // and, if `detok_in`, the detokenizer's (its codes' emb.emb rows averaged).
    void embed(const Frame* codes, int B, std::vector<float>& backbone_in, std::vector<float>* detok_in);
    // Runs one frame of each listed detokenizer sequence (detok_in: one row per sequence,
    // as `embed` gives them) and appends kUpsample rows of n_spec values per sequence, in
    // order, to `spectrum`.
    void detokenize(const std::vector<int>& seqs, const float* detok_in, std::vector<float>& spectrum);
    void reset(int seq);  // the detokenizer sequence starts a new stream

    // ---- probes (tests, fidelity); they use the last detokenizer sequence
    std::vector<float> detokenize_fresh(const std::vector<Frame>& frames);

    // ---- facts
    int audio_vocab() const { return n_audio_vocab_; }
    int depth_layers() const { return n_layer_; }
    int depth_dim() const { return dim_; }
    int n_spec() const { return n_spec_; }
    int n_embd() const { return n_embd_; }
    int detok_window() const { return detok_window_; }
    double load_ms() const { return load_ms_; }

private:
    struct Layer {
        ggml_tensor *attn_norm, *wqkv, *q_norm, *k_norm, *wo, *ffn_norm, *w1, *w2, *w3, *k_cache, *v_cache;
    };
    struct CodebookHead {
        ggml_tensor *embd, *norm, *to_logits;
    };
    struct StaticGraph;

    void load_vocoder(const std::string& path);
    ggml_backend_buffer_type_t matrix_buft(ggml_type type, int64_t ne0, int64_t ne1) const;
    void load_detokenizer(const std::string& path, int n_seqs, int n_threads);
    void free_all();
    std::unique_ptr<StaticGraph> new_graph() const;
    void allocate(StaticGraph& g) const;
    void compute(StaticGraph& g);
    StaticGraph& step_graph(int j, int B);
    StaticGraph& embed_graph(int B);
    void detok_rows(const std::vector<int>& seqs, const float* rows_in, int rows_per_seq, std::vector<float>& spectrum);

    llama_model* backbone_;
    ggml_backend_dev_t gpu_;
    std::string cpu_policy_, cpu_mode_;  // where matrices go on the CPU (cpu_weights.h)
    int n_embd_;

    // audio head (depthformer)
    int n_layer_ = 0, dim_ = 0, head_dim_ = 0, n_head_ = 32, n_head_kv_ = 8, n_audio_vocab_ = 0, max_batch_ = 0;
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
    std::map<std::pair<int, int>, std::unique_ptr<StaticGraph>> steps_;  // (codebook, batch) -> graph
    std::map<int, std::unique_ptr<StaticGraph>> embeds_;                 // batch -> graph

    // detokenizer
    llama_model* detok_model_ = nullptr;
    llama_context* detok_ctx_ = nullptr;
    CpuWeights detok_weights_;
    int detok_embd_n_ = 0, n_spec_ = 0, detok_window_ = 0, n_seqs_ = 0;
    std::vector<int> detok_pos_;  // per sequence

    double load_ms_ = 0;
};

}  // namespace pylfm
