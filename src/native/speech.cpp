#include "speech.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>

#include "common.h"
#include "ggml-alloc.h"
#include "gguf.h"
#include "mtmd-helper.h"

namespace pylfm {

namespace {

constexpr int kGraphSize = 2048;
constexpr int kDetokCodes = 2048;         // rows per codebook in the detokenizer's code table
constexpr double kMaxClipSeconds = 320.0;  // the LFM2A encoder's limit (see engine.cpp)
constexpr int kDetokBatch = 96;           // detokenizer positions per llama_decode (16 frames)

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

struct GgufDeleter { void operator()(gguf_context* g) const { gguf_free(g); } };
struct GgmlDeleter { void operator()(ggml_context* c) const { ggml_free(c); } };
using GgufPtr = std::unique_ptr<gguf_context, GgufDeleter>;
using GgmlPtr = std::unique_ptr<ggml_context, GgmlDeleter>;

std::string shape_str(const ggml_tensor* t) {
    std::string s = "[";
    for (int i = 0; i < ggml_n_dims(t); ++i) s += (i ? ", " : "") + std::to_string(t->ne[i]);
    return s + "]";
}

int argmax(const float* x, int n) {
    return static_cast<int>(std::max_element(x, x + n) - x);  // the first maximum, as torch.argmax
}

SamplerPtr make_sampler(float temperature, int top_k, uint32_t seed) {
    if (temperature <= 0.0f || top_k == 1) return nullptr;  // greedy (liquid-audio's rule)
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(top_k));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(seed));
    return chain;
}

}  // namespace

// ---------------------------------------------------------------- loading
// The CPU's repacked ("extra") buffer type that runs mul_mat with a weight of this type and
// shape (ggml-cpu repacks e.g. Q4_0/Q8_0 for faster matrix-vector products when the row
// count suits its interleaving), or nullptr.
ggml_backend_buffer_type_t SpeechEngine::matrix_buft(ggml_type type, int64_t ne0, int64_t ne1) const {
    if (engine_.gpu()) return nullptr;
    ggml_backend_dev_t dev = ggml_backend_get_device(backends_.back());
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
    if (!get_extra) return nullptr;
    for (ggml_backend_buffer_type_t* b = get_extra(dev); b && *b; ++b) {
        // would the CPU run this mul_mat with the weight in that buffer? (asked with a dry op)
        GgmlPtr c(ggml_init({4 * ggml_tensor_overhead(), nullptr, true}));
        ggml_tensor* a = ggml_new_tensor_2d(c.get(), type, ne0, ne1);
        ggml_tensor* x = ggml_new_tensor_1d(c.get(), GGML_TYPE_F32, ne0);
        ggml_tensor* op = ggml_mul_mat(c.get(), a, x);
        ggml_backend_buffer_t probe = ggml_backend_buft_alloc_buffer(*b, 0);
        a->buffer = probe;
        const bool ok = ggml_backend_dev_supports_op(dev, op);
        ggml_backend_buffer_free(probe);
        if (ok) return *b;
    }
    return nullptr;
}


SpeechEngine::SpeechEngine(Engine& engine, const std::string& vocoder_path, const std::string& detokenizer_path)
    : engine_(engine), model_(engine.model()), n_embd_(llama_model_n_embd(engine.model())) {
    ensure_backend();
    auto t0 = std::chrono::steady_clock::now();
    try {
        ggml_backend_dev_t gpu = engine.gpu();
        if (gpu) {
            ggml_backend_t b = ggml_backend_dev_init(gpu, nullptr);
            if (!b) throw engine_error("could not start the GPU backend for the audio head");
            backends_.push_back(b);
        }
        ggml_backend_t cpu = ggml_backend_init_by_type(GGML_BACKEND_DEVICE_TYPE_CPU, nullptr);
        if (!cpu) throw engine_error("could not start the CPU backend for the audio head");
        backends_.push_back(cpu);
        ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(ggml_backend_get_device(cpu));
        auto set_threads = reinterpret_cast<ggml_backend_set_n_threads_t>(
            ggml_backend_reg_get_proc_address(reg, "ggml_backend_set_n_threads"));
        if (set_threads) set_threads(cpu, engine.n_threads());

        load_vocoder(vocoder_path);
        load_detokenizer(detokenizer_path);
        make_context(4096);
    } catch (...) {
        free_all();
        throw;
    }
    load_ms_ = ms_since(t0);
}

SpeechEngine::~SpeechEngine() { free_all(); }

void SpeechEngine::free_all() {
    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }
    if (detok_ctx_) { llama_free(detok_ctx_); detok_ctx_ = nullptr; }
    if (detok_model_) { llama_model_free(detok_model_); detok_model_ = nullptr; }
    steps_.clear();
    embed_.reset();
    if (wbuf_) { ggml_backend_buffer_free(wbuf_); wbuf_ = nullptr; }
    if (mmbuf_) { ggml_backend_buffer_free(mmbuf_); mmbuf_ = nullptr; }
    if (cache_buf_) { ggml_backend_buffer_free(cache_buf_); cache_buf_ = nullptr; }
    if (wctx_) { ggml_free(wctx_); wctx_ = nullptr; }
    if (mmctx_) { ggml_free(mmctx_); mmctx_ = nullptr; }
    if (cache_ctx_) { ggml_free(cache_ctx_); cache_ctx_ = nullptr; }
    for (auto* b : backends_) ggml_backend_free(b);
    backends_.clear();
}

void SpeechEngine::load_vocoder(const std::string& path) {
    const std::string what = "the vocoder GGUF '" + path + "'";
    ggml_context* meta_raw = nullptr;
    gguf_init_params gp = {/*no_alloc=*/true, &meta_raw};
    GgufPtr g(gguf_init_from_file(path.c_str(), gp));
    GgmlPtr meta(meta_raw);
    if (!g) throw std::invalid_argument(what + " could not be read: it is missing, not a GGUF or truncated");

    auto get_u32 = [&](const char* key) {
        int64_t id = gguf_find_key(g.get(), key);
        if (id < 0 || gguf_get_kv_type(g.get(), id) != GGUF_TYPE_UINT32)
            throw std::invalid_argument(what + " has no '" + key + "' key: it is not an LFM2.5-Audio vocoder "
                                        "(vocoder-*.gguf, written by `pylfm convert` or published by LiquidAI)");
        return static_cast<int>(gguf_get_val_u32(g.get(), id));
    };
    n_layer_ = get_u32("depthformer_n_layer");
    dim_ = get_u32("depthformer_n_embd");
    if (n_layer_ <= 0 || dim_ <= 0 || dim_ % n_head_) throw std::invalid_argument(what + " has implausible depthformer sizes");
    head_dim_ = dim_ / n_head_;

    // Which tensors, and the shape each must have (ggml order; 0 = any).
    std::vector<std::string> names;
    auto need = [&](const std::string& n) { names.push_back(n); };
    for (int i = 0; i < n_layer_; ++i) {
        std::string p = "depthformer.layers." + std::to_string(i) + ".";
        for (const char* s : {"operator_norm.weight", "operator.qkv_proj.weight", "operator.attention.q_layernorm.weight",
                              "operator.attention.k_layernorm.weight", "operator.out_proj.weight", "ffn_norm.weight",
                              "feed_forward.w1.weight", "feed_forward.w2.weight", "feed_forward.w3.weight"})
            need(p + s);
    }
    need("depth_linear.weight");
    need("depth_linear.bias");
    bool tied_logits = false;
    for (int i = 0; i < kCodebooks; ++i) {
        std::string p = "depth_embeddings." + std::to_string(i) + ".";
        need(p + "embedding.weight");
        need(p + "embedding_norm.weight");
        if (ggml_get_tensor(meta.get(), (p + "to_logits.weight").c_str())) need(p + "to_logits.weight");
        else tied_logits = true;
    }
    need("audio_embedding.embedding.weight");
    need("emb.emb.weight");
    for (auto& n : names)
        if (!ggml_get_tensor(meta.get(), n.c_str()))
            throw std::invalid_argument(what + " has no tensor '" + n + "'; it is not a complete LFM2.5-Audio vocoder "
                                        "(convert the checkpoint again with `pylfm convert --with-speech`)");

    // Shapes: every mismatch is a wrong or foreign file, never something to run.
    auto M = [&](const std::string& n) { return ggml_get_tensor(meta.get(), n.c_str()); };
    const ggml_tensor* depth_w = M("depth_linear.weight");
    n_audio_vocab_ = static_cast<int>(M("depth_embeddings.0.embedding.weight")->ne[1]);
    const int kv = n_head_kv_ * head_dim_;
    auto check = [&](const ggml_tensor* t, int64_t ne0, int64_t ne1) {
        if (t->ne[0] != ne0 || (ne1 >= 0 && t->ne[1] != ne1) || (ne1 < 0 && ggml_n_dims(t) != 1))
            throw std::invalid_argument(what + ": tensor '" + ggml_get_name(t) + "' has shape " + shape_str(t) +
                                        ", expected [" + std::to_string(ne0) + (ne1 >= 0 ? ", " + std::to_string(ne1) : "") +
                                        "]; the file does not match the depthformer it declares");
    };
    if (depth_w->ne[0] != n_embd_)
        throw std::invalid_argument(what + " is for a backbone of width " + std::to_string(depth_w->ne[0]) +
                                    ", but the loaded model has width " + std::to_string(n_embd_) +
                                    "; use the vocoder converted from the same checkpoint as the model");
    check(depth_w, n_embd_, static_cast<int64_t>(kCodebooks) * dim_);
    check(M("depth_linear.bias"), static_cast<int64_t>(kCodebooks) * dim_, -1);
    if (n_audio_vocab_ != kEndOfAudio + 1)
        throw std::invalid_argument(what + ": codebooks of " + std::to_string(n_audio_vocab_) + " entries, expected 2049");
    for (int i = 0; i < kCodebooks; ++i) {
        std::string p = "depth_embeddings." + std::to_string(i) + ".";
        check(M(p + "embedding.weight"), dim_, n_audio_vocab_);
        check(M(p + "embedding_norm.weight"), dim_, -1);
        if (!tied_logits) check(M(p + "to_logits.weight"), dim_, n_audio_vocab_);
    }
    check(M("audio_embedding.embedding.weight"), n_embd_, static_cast<int64_t>(kCodebooks) * n_audio_vocab_);
    int64_t ff = 0;
    for (int i = 0; i < n_layer_; ++i) {
        std::string p = "depthformer.layers." + std::to_string(i) + ".";
        ff = M(p + "feed_forward.w1.weight")->ne[1];
        check(M(p + "operator_norm.weight"), dim_, -1);
        check(M(p + "ffn_norm.weight"), dim_, -1);
        check(M(p + "operator.qkv_proj.weight"), dim_, dim_ + 2 * kv);
        check(M(p + "operator.out_proj.weight"), dim_, dim_);
        check(M(p + "operator.attention.q_layernorm.weight"), head_dim_, -1);
        check(M(p + "operator.attention.k_layernorm.weight"), head_dim_, -1);
        check(M(p + "feed_forward.w3.weight"), dim_, ff);
        check(M(p + "feed_forward.w2.weight"), ff, dim_);
    }
    const ggml_tensor* demb = M("emb.emb.weight");
    if (demb->ne[1] != static_cast<int64_t>(kCodebooks) * kDetokCodes)
        throw std::invalid_argument(what + ": emb.emb.weight has shape " + shape_str(demb) + ", expected 8 x 2048 rows");

    // Two groups: the matrices only multiplied (in a repacked layout on the CPU when ggml
    // has one for their type: much faster matrix-vector products), and the rest (norms,
    // biases, embedding tables read row by row). depth_linear is split into its 8 slices
    // and a tied to_logits gets its own copy, so every multiplied matrix is a whole tensor.
    struct Load { ggml_tensor* dst; size_t offset; };
    std::vector<Load> loads;
    const size_t data_offset = gguf_get_data_offset(g.get());
    auto file_offset = [&](const std::string& n) {
        return data_offset + gguf_get_tensor_offset(g.get(), gguf_find_tensor(g.get(), n.c_str()));
    };
    const size_t n_mm = static_cast<size_t>(n_layer_) * 5 + 2 * kCodebooks;
    wctx_ = ggml_init({(names.size() + n_mm + 1) * ggml_tensor_overhead(), nullptr, true});
    mmctx_ = ggml_init({(n_mm + 1) * ggml_tensor_overhead(), nullptr, true});
    auto plain = [&](const std::string& n) {
        ggml_tensor* t = ggml_dup_tensor(wctx_, M(n));
        ggml_set_name(t, n.c_str());
        loads.push_back({t, file_offset(n)});
        return t;
    };
    ggml_backend_buffer_type_t repack = nullptr;
    auto matrix = [&](const std::string& n, const std::string& src, int64_t rows, size_t row0) {
        const ggml_tensor* m = M(src);
        ggml_backend_buffer_type_t b = matrix_buft(m->type, m->ne[0], rows);
        if (b) repack = b;
        ggml_tensor* t = ggml_new_tensor_2d(b ? mmctx_ : wctx_, m->type, m->ne[0], rows);
        ggml_set_name(t, n.c_str());
        loads.push_back({t, file_offset(src) + row0 * m->nb[1]});
        return t;
    };
    layers_.resize(n_layer_);
    for (int i = 0; i < n_layer_; ++i) {
        std::string p = "depthformer.layers." + std::to_string(i) + ".";
        auto whole = [&](const std::string& s) { return matrix(p + s, p + s, M(p + s)->ne[1], 0); };
        Layer& l = layers_[i];
        l.attn_norm = plain(p + "operator_norm.weight");
        l.q_norm = plain(p + "operator.attention.q_layernorm.weight");
        l.k_norm = plain(p + "operator.attention.k_layernorm.weight");
        l.ffn_norm = plain(p + "ffn_norm.weight");
        l.wqkv = whole("operator.qkv_proj.weight");
        l.wo = whole("operator.out_proj.weight");
        l.w1 = whole("feed_forward.w1.weight");
        l.w2 = whole("feed_forward.w2.weight");
        l.w3 = whole("feed_forward.w3.weight");
    }
    heads_.resize(kCodebooks);
    depth_ws_.resize(kCodebooks);
    for (int i = 0; i < kCodebooks; ++i) {
        std::string p = "depth_embeddings." + std::to_string(i) + ".";
        heads_[i].embd = plain(p + "embedding.weight");
        heads_[i].norm = plain(p + "embedding_norm.weight");
        heads_[i].to_logits = matrix(p + "to_logits.weight", p + (tied_logits ? "embedding.weight" : "to_logits.weight"),
                                     n_audio_vocab_, 0);
        depth_ws_[i] = matrix("depth_linear." + std::to_string(i), "depth_linear.weight", dim_, static_cast<size_t>(i) * dim_);
    }
    depth_b_ = plain("depth_linear.bias");
    audio_embd_ = plain("audio_embedding.embedding.weight");
    detok_embd_ = plain("emb.emb.weight");

    ggml_backend_buffer_type_t buft = ggml_backend_get_default_buffer_type(backends_[0]);
    wbuf_ = ggml_backend_alloc_ctx_tensors_from_buft(wctx_, buft);
    if (!wbuf_) throw engine_error("could not allocate memory for the audio head");
    ggml_backend_buffer_set_usage(wbuf_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    if (repack) {
        mmbuf_ = ggml_backend_alloc_ctx_tensors_from_buft(mmctx_, repack);
        if (!mmbuf_) throw engine_error("could not allocate memory for the audio head");
        ggml_backend_buffer_set_usage(mmbuf_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }

    FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) throw std::invalid_argument(what + " could not be opened");
    std::fseek(f, 0, SEEK_END);
    const long long file_size = static_cast<long long>(std::ftell(f));
    std::vector<uint8_t> buf;
    for (const Load& ld : loads) {
        const size_t nbytes = ggml_nbytes(ld.dst);
        buf.resize(nbytes);
        if (static_cast<long long>(ld.offset + nbytes) > file_size || std::fseek(f, static_cast<long>(ld.offset), SEEK_SET) != 0 ||
            std::fread(buf.data(), 1, nbytes, f) != nbytes) {
            std::fclose(f);
            throw std::invalid_argument(what + " is truncated (tensor '" + ggml_get_name(ld.dst) +
                                        "' runs past its end); get or convert it again");
        }
        ggml_backend_tensor_set(ld.dst, buf.data(), 0, nbytes);  // a repacking buffer repacks here
    }
    std::fclose(f);

    // KV cache of the depthformer: one position per codebook.
    ggml_init_params cp = {(2 * static_cast<size_t>(n_layer_) + 1) * ggml_tensor_overhead(), nullptr, true};
    ggml_context* cctx = ggml_init(cp);
    for (auto& l : layers_) {
        l.k_cache = ggml_new_tensor_3d(cctx, GGML_TYPE_F32, head_dim_, n_head_kv_, kCodebooks);
        l.v_cache = ggml_new_tensor_3d(cctx, GGML_TYPE_F32, head_dim_, n_head_kv_, kCodebooks);
    }
    cache_buf_ = ggml_backend_alloc_ctx_tensors_from_buft(cctx, ggml_backend_get_default_buffer_type(backends_[0]));
    if (!cache_buf_) { ggml_free(cctx); throw engine_error("could not allocate the depthformer cache"); }
    ggml_backend_buffer_clear(cache_buf_, 0);
    cache_ctx_ = cctx;
}

void SpeechEngine::load_detokenizer(const std::string& path) {
    const std::string what = "the audio detokenizer GGUF '" + path + "'";
    llama_model_params mp = llama_model_default_params();
    ggml_backend_dev_t devs[2] = {engine_.gpu(), nullptr};
    if (engine_.gpu()) { mp.devices = devs; mp.n_gpu_layers = -1; }
    else { mp.n_gpu_layers = 0; }
    detok_model_ = llama_model_load_from_file(path.c_str(), mp);
    if (!detok_model_) throw engine_error("could not load " + what + " (tokenizer-*.gguf, an lfm2 model)");
    char arch[64] = {0};
    llama_model_meta_val_str(detok_model_, "general.architecture", arch, sizeof arch);
    detok_embd_n_ = llama_model_n_embd(detok_model_);
    n_spec_ = llama_model_n_embd_out(detok_model_);
    if (std::string(arch) != "lfm2" || n_spec_ == detok_embd_n_ || n_spec_ % 2)
        throw std::invalid_argument(what + " is not an LFM2.5 audio detokenizer (an lfm2 model with a " +
                                    "spectrogram output of embedding_length_out values); pass tokenizer-*.gguf");
    if (detok_embd_n_ != detok_embd_->ne[0])
        throw std::invalid_argument(what + " has width " + std::to_string(detok_embd_n_) + " but the vocoder's code "
                                    "embedding has " + std::to_string(detok_embd_->ne[0]) + "; use files of the same model");
    char window[32] = {0};
    if (llama_model_meta_val_str(detok_model_, "lfm2.attention.sliding_window", window, sizeof window) > 0)
        detok_window_ = std::atoi(window);

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = 1024;
    cp.n_batch = kDetokBatch;
    cp.n_ubatch = kDetokBatch;
    cp.n_seq_max = 1;
    cp.n_threads = engine_.n_threads();
    cp.n_threads_batch = engine_.n_threads();
    cp.embeddings = true;
    cp.pooling_type = LLAMA_POOLING_TYPE_NONE;
    cp.type_k = GGML_TYPE_F32;  // a window of 30 positions: full precision costs nothing
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.swa_full = false;  // only the window's positions are kept: audio of any length streams through
    cp.no_perf = true;
    if (!engine_.gpu()) cp.op_offload = false;
    detok_ctx_ = llama_init_from_model(detok_model_, cp);
    if (!detok_ctx_) throw engine_error("could not create a context for " + what);
}

void SpeechEngine::make_context(int n_ctx) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(n_ctx);
    cp.n_batch = 512;
    cp.n_ubatch = 512;
    cp.n_seq_max = 1;
    cp.n_threads = engine_.n_threads();
    cp.n_threads_batch = engine_.n_threads();
    cp.pooling_type = LLAMA_POOLING_TYPE_NONE;
    cp.no_perf = true;
    cp.flash_attn_type = engine_.flash_attn() ? LLAMA_FLASH_ATTN_TYPE_AUTO : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    if (!engine_.gpu()) cp.op_offload = false;
    // An all-F32 model gets an F32 cache: its hidden states then match the reference closely
    // enough for greedy audio codes to agree (the depthformer's decisions are often close).
    char ftype[16] = {0};
    if (llama_model_meta_val_str(model_, "general.file_type", ftype, sizeof ftype) > 0 && std::atoi(ftype) == 0) {
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
    }
    if (ctx_) { llama_free(ctx_); ctx_ = nullptr; }
    prefix_tokens_.clear();
    prefix_state_.clear();
    ctx_ = llama_init_from_model(model_, cp);
    if (!ctx_) throw engine_error("could not create a speech context of " + std::to_string(n_ctx) + " tokens");
    n_ctx_ = static_cast<int>(llama_n_ctx(ctx_));
}

// ---------------------------------------------------------------- the audio head graphs
// A graph built and allocated once and run many times: the shapes of every step are fixed
// (codebook j always attends to positions 0..j), so nothing is rebuilt per frame.
struct SpeechEngine::StaticGraph {
    std::vector<uint8_t> meta;
    ggml_context* ctx = nullptr;
    ggml_cgraph* gf = nullptr;
    ggml_gallocr_t alloc = nullptr;
    ggml_tensor *in = nullptr, *in2 = nullptr, *pos = nullptr, *out = nullptr, *out2 = nullptr;
    ~StaticGraph() {
        if (alloc) ggml_gallocr_free(alloc);
        if (ctx) ggml_free(ctx);
    }
};

std::unique_ptr<SpeechEngine::StaticGraph> SpeechEngine::new_graph() const {
    auto g = std::make_unique<StaticGraph>();
    g->meta.resize(kGraphSize * ggml_tensor_overhead() + ggml_graph_overhead_custom(kGraphSize, false));
    g->ctx = ggml_init({g->meta.size(), g->meta.data(), /*no_alloc=*/true});
    g->gf = ggml_new_graph_custom(g->ctx, kGraphSize, false);
    return g;
}

void SpeechEngine::allocate(StaticGraph& g) const {
    g.alloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backends_[0]));
    if (!g.alloc || !ggml_gallocr_alloc_graph(g.alloc, g.gf)) throw engine_error("could not allocate an audio-head graph");
}

void SpeechEngine::compute(StaticGraph& g) {
    if (ggml_backend_graph_compute(backends_[0], g.gf) != GGML_STATUS_SUCCESS)
        throw engine_error("the audio head's computation failed");
}

// Codebook j's step: the depthformer at position j, on slice j of depth_linear(hidden) plus
// the embedding of the previous codebook's code (input `in2`); writes position j of the KV
// cache; output: codebook j's logits.
std::unique_ptr<SpeechEngine::StaticGraph> SpeechEngine::build_step(int j) {
    auto g = new_graph();
    ggml_context* c0 = g->ctx;
    ggml_cgraph* gf = g->gf;
    ggml_tensor* h = g->in = ggml_new_tensor_1d(c0, GGML_TYPE_F32, n_embd_);
    ggml_set_input(h);
    ggml_tensor* pos = g->pos = ggml_new_tensor_1d(c0, GGML_TYPE_I32, 1);
    ggml_set_input(pos);

    ggml_tensor* cur = ggml_mul_mat(c0, depth_ws_[j], h);
    cur = ggml_add(c0, cur, ggml_view_1d(c0, depth_b_, dim_, static_cast<size_t>(j) * dim_ * ggml_element_size(depth_b_)));
    if (j > 0) {
        g->in2 = ggml_new_tensor_1d(c0, GGML_TYPE_I32, 1);
        ggml_set_input(g->in2);
        cur = ggml_add(c0, cur, ggml_get_rows(c0, heads_[j - 1].embd, g->in2));
    }
    const int kv = n_head_kv_ * head_dim_;
    const size_t es = sizeof(float);
    for (const Layer& l : layers_) {
        ggml_tensor* x = cur;
        ggml_tensor* n = ggml_mul(c0, ggml_rms_norm(c0, x, eps_), l.attn_norm);
        ggml_tensor* qkv = ggml_mul_mat(c0, l.wqkv, n);  // [dim + 2 kv, 1]
        ggml_tensor* q = ggml_view_3d(c0, qkv, head_dim_, n_head_, 1, head_dim_ * es, qkv->nb[1], 0);
        ggml_tensor* k = ggml_view_3d(c0, qkv, head_dim_, n_head_kv_, 1, head_dim_ * es, qkv->nb[1], dim_ * es);
        ggml_tensor* v = ggml_view_3d(c0, qkv, head_dim_, n_head_kv_, 1, head_dim_ * es, qkv->nb[1], (dim_ + kv) * es);
        q = ggml_mul(c0, ggml_rms_norm(c0, q, eps_), l.q_norm);
        k = ggml_mul(c0, ggml_rms_norm(c0, k, eps_), l.k_norm);
        // liquid-audio's RoPE rotates adjacent pairs: ggml's "normal" mode
        q = ggml_rope_ext(c0, q, pos, nullptr, head_dim_, GGML_ROPE_TYPE_NORMAL, 0, rope_base_, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
        k = ggml_rope_ext(c0, k, pos, nullptr, head_dim_, GGML_ROPE_TYPE_NORMAL, 0, rope_base_, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
        ggml_tensor* kc = l.k_cache;
        ggml_tensor* vc = l.v_cache;
        ggml_build_forward_expand(gf, ggml_cpy(c0, k, ggml_view_3d(c0, kc, head_dim_, n_head_kv_, 1, kc->nb[1], kc->nb[2], j * kc->nb[2])));
        ggml_build_forward_expand(gf, ggml_cpy(c0, v, ggml_view_3d(c0, vc, head_dim_, n_head_kv_, 1, vc->nb[1], vc->nb[2], j * vc->nb[2])));
        ggml_tensor* K = ggml_permute(c0, ggml_view_3d(c0, kc, head_dim_, n_head_kv_, j + 1, kc->nb[1], kc->nb[2], 0), 0, 2, 1, 3);
        ggml_tensor* V = ggml_view_3d(c0, vc, head_dim_, n_head_kv_, j + 1, vc->nb[1], vc->nb[2], 0);
        ggml_tensor* Q = ggml_permute(c0, q, 0, 2, 1, 3);                 // [hd, 1, heads]
        ggml_tensor* kq = ggml_mul_mat(c0, K, Q);                          // [j+1, 1, heads]; head h reads KV head h/4
        kq = ggml_soft_max_ext(c0, kq, nullptr, 1.0f / std::sqrt(static_cast<float>(head_dim_)), 0.0f);
        ggml_tensor* Vt = ggml_cont(c0, ggml_permute(c0, V, 1, 2, 0, 3));  // [j+1, hd, kv heads]
        ggml_tensor* o = ggml_mul_mat(c0, Vt, kq);                         // [hd, 1, heads]
        o = ggml_cont_2d(c0, ggml_permute(c0, o, 0, 2, 1, 3), dim_, 1);
        cur = ggml_add(c0, ggml_mul_mat(c0, l.wo, o), x);
        ggml_tensor* f = ggml_mul(c0, ggml_rms_norm(c0, cur, eps_), l.ffn_norm);
        f = ggml_swiglu_split(c0, ggml_mul_mat(c0, l.w1, f), ggml_mul_mat(c0, l.w3, f));  // silu(w1 f) * w3 f
        cur = ggml_add(c0, cur, ggml_mul_mat(c0, l.w2, f));
    }
    const CodebookHead& head = heads_[j];
    g->out = ggml_mul_mat(c0, head.to_logits, ggml_mul(c0, ggml_rms_norm(c0, cur, eps_), head.norm));
    ggml_set_output(g->out);
    ggml_build_forward_expand(gf, g->out);
    allocate(*g);
    return g;
}

std::vector<float> SpeechEngine::depth_step(const float* hidden, int j, int prev_code) {
    if (steps_.empty())
        for (int i = 0; i < kCodebooks; ++i) steps_.push_back(build_step(i));
    StaticGraph& g = *steps_[j];
    // every input is set before each run: the allocator reuses an input's memory once it is read
    ggml_backend_tensor_set(g.in, hidden, 0, n_embd_ * sizeof(float));
    const int32_t pos = j;
    ggml_backend_tensor_set(g.pos, &pos, 0, sizeof pos);
    if (g.in2) {
        const int32_t pc = prev_code;
        ggml_backend_tensor_set(g.in2, &pc, 0, sizeof pc);
    }
    compute(g);
    std::vector<float> out(n_audio_vocab_);
    ggml_backend_tensor_get(g.out, out.data(), 0, out.size() * sizeof(float));
    return out;
}

// One audio frame: 8 codes, each sampled (or forced) after its own depthformer step.
Frame SpeechEngine::run_frame(const float* hidden, const Frame* forced, llama_sampler* smpl, std::vector<float>* logits_out) {
    Frame codes{};
    std::vector<llama_token_data> cand(n_audio_vocab_);
    int prev = -1;
    for (int j = 0; j < kCodebooks; ++j) {
        std::vector<float> logits = depth_step(hidden, j, prev);
        if (logits_out) logits_out->insert(logits_out->end(), logits.begin(), logits.end());
        int code;
        if (forced) {
            code = (*forced)[j];
        } else if (!smpl) {
            code = argmax(logits.data(), n_audio_vocab_);
        } else {
            for (int i = 0; i < n_audio_vocab_; ++i) cand[i] = {i, logits[i], 0.0f};
            llama_token_data_array arr = {cand.data(), cand.size(), -1, false};
            llama_sampler_apply(smpl, &arr);
            if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) throw std::runtime_error("audio sampling failed");
            code = arr.data[arr.selected].id;
        }
        if (code < 0 || code >= n_audio_vocab_) throw std::invalid_argument("audio code out of range");
        codes[j] = code;
        prev = code;
    }
    return codes;
}

// The backbone's input for a frame (its codes' audio embeddings, summed) and, if asked,
// the detokenizer's (its codes' rows of emb.emb, averaged).
void SpeechEngine::embed_frame(const Frame& codes, std::vector<float>& backbone_in, std::vector<float>* detok_in) {
    if (!embed_) {
        embed_ = new_graph();
        ggml_context* c0 = embed_->ctx;
        embed_->in = ggml_new_tensor_1d(c0, GGML_TYPE_I32, kCodebooks);
        ggml_set_input(embed_->in);
        ggml_tensor* rows = ggml_get_rows(c0, audio_embd_, embed_->in);                  // [n_embd, 8]
        embed_->out = ggml_sum_rows(c0, ggml_cont(c0, ggml_transpose(c0, rows)));       // [1, n_embd]
        ggml_set_output(embed_->out);
        ggml_build_forward_expand(embed_->gf, embed_->out);
        embed_->in2 = ggml_new_tensor_1d(c0, GGML_TYPE_I32, kCodebooks);
        ggml_set_input(embed_->in2);
        ggml_tensor* drows = ggml_get_rows(c0, detok_embd_, embed_->in2);
        embed_->out2 = ggml_scale(c0, ggml_sum_rows(c0, ggml_cont(c0, ggml_transpose(c0, drows))), 1.0f / kCodebooks);
        ggml_set_output(embed_->out2);
        ggml_build_forward_expand(embed_->gf, embed_->out2);
        allocate(*embed_);
    }
    int32_t a[kCodebooks], d[kCodebooks];
    for (int k = 0; k < kCodebooks; ++k) {
        a[k] = codes[k] + k * n_audio_vocab_;
        d[k] = std::min(codes[k], kDetokCodes - 1) + k * kDetokCodes;  // unused when a code is 2048
    }
    ggml_backend_tensor_set(embed_->in, a, 0, sizeof a);
    ggml_backend_tensor_set(embed_->in2, d, 0, sizeof d);
    compute(*embed_);
    backbone_in.resize(n_embd_);
    ggml_backend_tensor_get(embed_->out, backbone_in.data(), 0, n_embd_ * sizeof(float));
    if (detok_in) {
        detok_in->resize(detok_embd_n_);
        ggml_backend_tensor_get(embed_->out2, detok_in->data(), 0, detok_embd_n_ * sizeof(float));
    }
}

// Runs the detokenizer over n_frames frames' embeddings (each repeated kUpsample times),
// continuing its cache; appends kUpsample*n_frames rows of n_spec_ values to `spectrum`.
void SpeechEngine::detok_frame(const std::vector<float>& detok_in, int n_frames, std::vector<float>& spectrum) {
    const int n = n_frames * kUpsample;
    std::vector<float> rows(static_cast<size_t>(n) * detok_embd_n_);
    for (int f = 0; f < n_frames; ++f)
        for (int r = 0; r < kUpsample; ++r)
            std::memcpy(&rows[(static_cast<size_t>(f) * kUpsample + r) * detok_embd_n_], &detok_in[static_cast<size_t>(f) * detok_embd_n_],
                        detok_embd_n_ * sizeof(float));
    RowBatch batch(kDetokBatch);
    for (int off = 0; off < n; off += kDetokBatch) {
        const int m = std::min(kDetokBatch, n - off);
        // Positions that left the attention window are never read again: drop them, so the
        // cache (sized for the window) holds any length of audio.
        if (detok_window_ > 0 && detok_pos_ > detok_window_)
            llama_memory_seq_rm(llama_get_memory(detok_ctx_), 0, 0, detok_pos_ - detok_window_);
        batch.clear();
        batch.set_embd(rows.data() + static_cast<size_t>(off) * detok_embd_n_);
        for (int i = 0; i < m; ++i) batch.add_embd_row(detok_pos_ + i, 0);
        llama_batch b = batch.get();
        std::vector<int8_t> all(m, 1);
        b.logits = all.data();  // every row is an output
        if (llama_decode(detok_ctx_, b) != 0) throw engine_error("the audio detokenizer failed");
        detok_pos_ += m;
        const float* e = llama_get_embeddings(detok_ctx_);
        if (!e) throw engine_error("the audio detokenizer produced no output");
        spectrum.insert(spectrum.end(), e, e + static_cast<size_t>(m) * n_spec_);
    }
}

// ---------------------------------------------------------------- probes
std::vector<float> SpeechEngine::depth_logits(const std::vector<float>& hidden, const Frame& codes) {
    if (static_cast<int>(hidden.size()) != n_embd_) throw std::invalid_argument("hidden must have n_embd values");
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<float> out;
    run_frame(hidden.data(), &codes, nullptr, &out);
    return out;
}

Frame SpeechEngine::sample_frame(const std::vector<float>& hidden, float temperature, int top_k, uint32_t seed) {
    if (static_cast<int>(hidden.size()) != n_embd_) throw std::invalid_argument("hidden must have n_embd values");
    std::lock_guard<std::mutex> lock(mu_);
    SamplerPtr smpl = make_sampler(temperature, top_k, seed);
    return run_frame(hidden.data(), nullptr, smpl.get(), nullptr);
}

std::vector<float> SpeechEngine::frame_embedding(const Frame& codes) {
    for (int c : codes) if (c < 0 || c >= n_audio_vocab_) throw std::invalid_argument("audio codes must be in [0, 2048]");
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<float> out;
    embed_frame(codes, out, nullptr);
    return out;
}

std::vector<float> SpeechEngine::detokenize(const std::vector<Frame>& frames) {
    for (auto& f : frames)
        for (int c : f) if (c < 0 || c >= kDetokCodes) throw std::invalid_argument("detokenizer codes must be in [0, 2047]");
    std::lock_guard<std::mutex> lock(mu_);
    llama_memory_clear(llama_get_memory(detok_ctx_), true);
    detok_pos_ = 0;
    std::vector<float> embd, all, tmp;
    for (auto& f : frames) {
        embed_frame(f, tmp, &embd);
        all.insert(all.end(), embd.begin(), embd.end());
    }
    std::vector<float> spectrum;
    if (!frames.empty()) detok_frame(all, static_cast<int>(frames.size()), spectrum);
    return spectrum;
}

// ---------------------------------------------------------------- generation
namespace {

ChunksPtr tokenize_prompt(Engine& engine, const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio) {
    mtmd_context* mctx = engine.mtmd();
    std::vector<BitmapPtr> bitmaps;
    for (auto& pcm : audio) {
        if (pcm.empty()) throw std::invalid_argument("an audio clip is empty");
        if (pcm.size() > static_cast<size_t>(kMaxClipSeconds * engine.sample_rate()))
            throw std::invalid_argument("the audio is longer than the audio encoder takes at once (" +
                                        std::to_string(static_cast<int>(kMaxClipSeconds)) + " s); shorten it");
        bitmaps.emplace_back(mtmd_bitmap_init_from_audio(pcm.size(), pcm.data()));
        if (!bitmaps.back()) throw engine_error("could not prepare the audio");
    }
    std::vector<mtmd_input_text> texts(parts.size());
    std::vector<mtmd_input_part> mparts(parts.size());
    std::vector<const mtmd_input_part*> ptrs;
    for (size_t i = 0; i < parts.size(); ++i) {
        const PromptPart& p = parts[i];
        if (p.audio >= 0) {
            if (p.audio >= static_cast<int>(audio.size())) throw std::invalid_argument("a prompt part refers to a missing audio clip");
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
        std::lock_guard<std::mutex> lock(engine.mtmd_mutex());
        rc = mtmd_tokenize_from_parts(mctx, chunks.get(), ptrs.data(), ptrs.size(), /*add_special=*/true);
    }
    if (rc != 0) throw engine_error("could not turn the prompt into model input");
    return chunks;
}

}  // namespace

// The prompt up to its second turn (BOS + the system turn: the voice instruction) is the
// same for many requests: its state is kept after the first and restored for the next
// request that starts with the same tokens, instead of evaluating it again. Returns how
// many tokens of `toks` are in the context afterwards.
size_t SpeechEngine::prefill_prefix(const llama_token* toks, size_t n, RowBatch& batch) {
    size_t p = 0;
    int starts = 0;
    for (; p < n; ++p)
        if (toks[p] == kImStart && ++starts == 2) break;
    if (starts < 2 || p == 0) return 0;  // no system turn before a second one
    std::vector<llama_token> prefix(toks, toks + p);
    if (prefix == prefix_tokens_ && !prefix_state_.empty() &&
        llama_state_seq_set_data(ctx_, prefix_state_.data(), prefix_state_.size(), 0) == prefix_state_.size())
        return p;
    llama_memory_clear(llama_get_memory(ctx_), true);
    for (size_t off = 0; off < p; off += 512) {
        batch.clear();
        const size_t end = std::min(p, off + 512);
        for (size_t j = off; j < end; ++j) batch.add(toks[j], static_cast<llama_pos>(j), 0, false);
        if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("prompt evaluation failed");
    }
    prefix_state_.resize(llama_state_seq_get_size(ctx_, 0));
    prefix_state_.resize(llama_state_seq_get_data(ctx_, prefix_state_.data(), prefix_state_.size(), 0));
    prefix_tokens_ = prefix_state_.empty() ? std::vector<llama_token>() : prefix;
    return p;
}

SpeechResult SpeechEngine::generate(const std::vector<PromptPart>& parts, const std::vector<std::vector<float>>& audio,
                                    const SpeechParams& sp, const SpeechSink& sink, const std::shared_ptr<CancelFlag>& cancel) {
    std::lock_guard<std::mutex> lock(mu_);
    SpeechResult res;
    auto t_enc = std::chrono::steady_clock::now();
    ChunksPtr chunks = tokenize_prompt(engine_, parts, audio);
    res.encode_ms += ms_since(t_enc);
    const size_t n_chunks = mtmd_input_chunks_size(chunks.get());
    if (n_chunks == 0 || mtmd_input_chunk_get_type(mtmd_input_chunks_get(chunks.get(), n_chunks - 1)) != MTMD_INPUT_CHUNK_TYPE_TEXT)
        throw std::invalid_argument("the prompt must end with text");
    const int n_prompt = static_cast<int>(mtmd_helper_get_n_pos(chunks.get()));
    res.n_prompt_tokens = n_prompt;
    const int max_ctx = std::max(4096, static_cast<int>(llama_model_n_ctx_train(model_)));
    if (n_prompt + 2 > max_ctx) throw std::length_error("the prompt (" + std::to_string(n_prompt) + " tokens) does not fit the model's context");
    const int need = std::min(max_ctx, n_prompt + std::max(1, sp.max_new_tokens) + 2);
    if (need > n_ctx_) make_context((need + 255) / 256 * 256);
    llama_memory_clear(llama_get_memory(ctx_), true);
    llama_memory_clear(llama_get_memory(detok_ctx_), true);
    detok_pos_ = 0;
    auto cancelled = [&] { return cancel && cancel->set.load(); };

    // ---- prefill: everything but the last token without outputs; the last one alone, with
    // logits (text first) or its hidden state (audio first).
    const int n_embd_in = llama_model_n_embd_inp(model_);
    llama_pos n_past = 0;
    RowBatch batch(512);
    llama_set_embeddings(ctx_, false);
    auto t_pre = std::chrono::steady_clock::now();
    llama_token last = -1;
    for (size_t i = 0; i < n_chunks; ++i) {
        if (cancelled()) { res.stop_reason = "cancelled"; return res; }
        const mtmd_input_chunk* c = mtmd_input_chunks_get(chunks.get(), i);
        const bool last_chunk = i + 1 == n_chunks;
        if (mtmd_input_chunk_get_type(c) == MTMD_INPUT_CHUNK_TYPE_TEXT) {
            size_t n = 0;
            const llama_token* toks = mtmd_input_chunk_get_tokens_text(c, &n);
            size_t n_now = last_chunk ? n - 1 : n;
            if (last_chunk) last = toks[n - 1];
            size_t start = 0;
            if (i == 0) n_past = start = static_cast<llama_pos>(prefill_prefix(toks, n_now, batch));
            for (size_t off = start; off < n_now; off += 512) {
                batch.clear();
                size_t end = std::min(n_now, off + 512);
                for (size_t j = off; j < end; ++j) batch.add(toks[j], n_past++, 0, false);
                if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("prompt evaluation failed");
            }
        } else {
            const size_t n = mtmd_input_chunk_get_n_tokens(c);
            std::vector<float> embd;
            auto t0 = std::chrono::steady_clock::now();
            {
                std::lock_guard<std::mutex> mlock(engine_.mtmd_mutex());
                if (mtmd_encode_chunk(engine_.mtmd(), c) != 0) throw engine_error("audio encoding failed");
                const float* e = mtmd_get_output_embd(engine_.mtmd());
                embd.assign(e, e + n * static_cast<size_t>(n_embd_in));
            }
            res.encode_ms += ms_since(t0);
            for (size_t off = 0; off < n; off += 512) {
                batch.clear();
                batch.set_embd(embd.data() + off * n_embd_in);
                size_t end = std::min(n, off + 512);
                for (size_t j = off; j < end; ++j) batch.add_embd_row(n_past++, 0);
                if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("decoding the audio embeddings failed");
            }
        }
    }
    bool audio_mode = sp.start_audio;
    llama_set_embeddings(ctx_, audio_mode);
    batch.clear();
    batch.add(last, n_past++, 0, true);
    if (llama_decode(ctx_, batch.get()) != 0) throw engine_error("prompt evaluation failed");
    res.prefill_ms = ms_since(t_pre);

    // ---- the generation loop (liquid-audio's generate_sequential / generate_interleaved)
    SamplerPtr text_smpl = make_sampler(sp.text_temperature, sp.text_top_k, sp.seed + 1);
    SamplerPtr audio_smpl = make_sampler(sp.audio_temperature, sp.audio_top_k, sp.seed);
    int left = audio_mode ? sp.n_audio : sp.n_text;
    bool text_done = false;
    std::string pending;
    std::vector<float> next_embd, detok_in, spectrum;
    const int n_vocab = llama_vocab_n_tokens(engine_.vocab());
    for (int step = 0;; ++step) {
        if (cancelled()) { res.stop_reason = "cancelled"; break; }
        if (sp.interleaved) --left;
        llama_token next_token = -1;
        SpeechEvent ev;
        std::string stop;
        if (!audio_mode) {
            llama_token tok;
            if (text_smpl) {
                tok = llama_sampler_sample(text_smpl.get(), ctx_, -1);
            } else {
                const float* logits = llama_get_logits_ith(ctx_, -1);
                if (!logits) throw engine_error("no logits for the text step");
                tok = argmax(logits, n_vocab);
            }
            if (sp.interleaved && tok == kImEnd) { res.stop_reason = "stop"; break; }
            res.tokens.push_back(tok);
            pending += engine_.token_piece(tok, false);
            ev.kind = SpeechEvent::Text;
            ev.token = tok;
            ev.text = take_utf8(pending, false);
            res.text += ev.text;
            if (!sp.interleaved) {
                if (tok == kAudioStart) audio_mode = true;
                if (tok == kImEnd) stop = "stop";
            } else {
                if (tok == kTextEnd) text_done = true;
                if (left == 0 || text_done) { audio_mode = true; left = sp.n_audio; }
            }
            next_token = tok;
        } else {
            const float* hidden = llama_get_embeddings_ith(ctx_, -1);
            if (!hidden) throw engine_error("no hidden state for the audio step");
            auto t0 = std::chrono::steady_clock::now();
            Frame codes = run_frame(hidden, nullptr, audio_smpl.get(), nullptr);
            res.depth_ms += ms_since(t0);
            const bool end = codes[0] == kEndOfAudio && !sp.ignore_audio_end;
            if (sp.interleaved && left == 0 && !text_done) { audio_mode = false; left = sp.n_text; }
            if (end) { codes.fill(kEndOfAudio); audio_mode = false; }
            ev.kind = end ? SpeechEvent::AudioEnd : SpeechEvent::Audio;
            ev.codes = codes;
            const bool valid = !end && std::none_of(codes.begin(), codes.end(), [](int c) { return c >= kDetokCodes; });
            auto t1 = std::chrono::steady_clock::now();
            embed_frame(codes, next_embd, sp.detokenize && valid ? &detok_in : nullptr);
            res.depth_ms += ms_since(t1);
            if (sp.detokenize && valid) {
                auto t2 = std::chrono::steady_clock::now();
                detok_frame(detok_in, 1, ev.spectrum);
                res.detok_ms += ms_since(t2);
            }
            if (!end) res.frames.push_back(codes);
            if (end && sp.stop_at_audio_end) stop = "audio_end";
            else if (!end && sp.max_audio_frames >= 0 && static_cast<int>(res.frames.size()) >= sp.max_audio_frames) stop = "length";
        }
        sink(ev);
        if (!stop.empty()) { res.stop_reason = stop; break; }
        if (step + 1 >= sp.max_new_tokens) { res.stop_reason = "length"; break; }
        if (n_past >= n_ctx_) { res.stop_reason = "context"; break; }
        // feed the step back; the mode of the next step decides what the backbone outputs
        llama_set_embeddings(ctx_, audio_mode);
        batch.clear();
        if (next_token >= 0) {
            batch.add(next_token, n_past++, 0, true);
        } else {
            batch.set_embd(next_embd.data());
            batch.add_embd_row(n_past++, 0);
        }
        auto t3 = std::chrono::steady_clock::now();
        llama_batch b = batch.get();
        int8_t one = 1;
        b.logits = &one;
        if (llama_decode(ctx_, b) != 0) throw engine_error("llama_decode failed during speech generation");
        res.backbone_ms += ms_since(t3);
    }
    std::string tail = take_utf8(pending, true);
    if (!tail.empty()) {
        res.text += tail;
        SpeechEvent ev;
        ev.kind = SpeechEvent::Text;
        ev.text = tail;
        sink(ev);
    }
    return res;
}

}  // namespace pylfm
