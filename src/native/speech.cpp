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
#include "sampling.h"

namespace pylfm {

namespace {

constexpr int kGraphSize = 2048;
constexpr int kDetokBatch = 96;  // detokenizer rows per llama_decode when run alone (16 frames)

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

}  // namespace

// ---------------------------------------------------------------- loading
SpeechHead::SpeechHead(llama_model* backbone, ggml_backend_dev_t gpu, int n_threads, int n_seqs,
                       const std::string& vocoder_path, const std::string& detokenizer_path, const std::string& cpu_repack)
    : backbone_(backbone), gpu_(gpu), n_embd_(llama_model_n_embd(backbone)), max_batch_(std::max(1, n_seqs)) {
    ensure_backend();
    cpu_policy_ = normalize_policy(cpu_repack);
    cpu_mode_ = plan_cpu_weights(cpu_policy_, cpu_facts(), {}, gpu != nullptr).mode;
    auto t0 = std::chrono::steady_clock::now();
    try {
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
        if (set_threads) set_threads(cpu, n_threads);

        load_vocoder(vocoder_path);
        load_detokenizer(detokenizer_path, n_seqs, n_threads);
    } catch (...) {
        free_all();
        throw;
    }
    load_ms_ = ms_since(t0);
}

SpeechHead::~SpeechHead() { free_all(); }

void SpeechHead::free_all() {
    if (detok_ctx_) { llama_free(detok_ctx_); detok_ctx_ = nullptr; }
    if (detok_model_) { llama_model_free(detok_model_); detok_model_ = nullptr; }
    steps_.clear();
    embeds_.clear();
    if (wbuf_) { ggml_backend_buffer_free(wbuf_); wbuf_ = nullptr; }
    if (mmbuf_) { ggml_backend_buffer_free(mmbuf_); mmbuf_ = nullptr; }
    if (cache_buf_) { ggml_backend_buffer_free(cache_buf_); cache_buf_ = nullptr; }
    if (wctx_) { ggml_free(wctx_); wctx_ = nullptr; }
    if (mmctx_) { ggml_free(mmctx_); mmctx_ = nullptr; }
    if (cache_ctx_) { ggml_free(cache_ctx_); cache_ctx_ = nullptr; }
    for (auto* b : backends_) ggml_backend_free(b);
    backends_.clear();
}

ggml_backend_buffer_type_t SpeechHead::matrix_buft(ggml_type type, int64_t ne0, int64_t ne1) const {
    if (gpu_) return nullptr;
    return cpu_matrix_buft(cpu_mode_, type, ne0, ne1);  // never AMX unless asked (cpu_weights.h)
}


void SpeechHead::load_vocoder(const std::string& path) {
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

    // KV cache of the depthformer: one position per codebook, one column per batch row (a
    // frame attends only to its own codebooks: nothing is kept from one frame to the next).
    ggml_init_params cp = {(2 * static_cast<size_t>(n_layer_) + 1) * ggml_tensor_overhead(), nullptr, true};
    ggml_context* cctx = ggml_init(cp);
    for (auto& l : layers_) {
        l.k_cache = ggml_new_tensor_4d(cctx, GGML_TYPE_F32, head_dim_, n_head_kv_, kCodebooks, max_batch_);
        l.v_cache = ggml_new_tensor_4d(cctx, GGML_TYPE_F32, head_dim_, n_head_kv_, kCodebooks, max_batch_);
    }
    cache_buf_ = ggml_backend_alloc_ctx_tensors_from_buft(cctx, ggml_backend_get_default_buffer_type(backends_[0]));
    if (!cache_buf_) { ggml_free(cctx); throw engine_error("could not allocate the depthformer cache"); }
    ggml_backend_buffer_clear(cache_buf_, 0);
    cache_ctx_ = cctx;
}

void SpeechHead::load_detokenizer(const std::string& path, int n_seqs, int n_threads) {
    const std::string what = "the audio detokenizer GGUF '" + path + "'";
    llama_model_params mp = llama_model_default_params();
    ggml_backend_dev_t devs[2] = {gpu_, nullptr};
    if (gpu_) { mp.devices = devs; mp.n_gpu_layers = -1; }
    else { mp.n_gpu_layers = 0; }
    detok_model_ = detok_weights_.load_model(cpu_policy_, path, mp, gpu_ != nullptr);
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

    // One sequence per engine slot (+1 for probes), each keeping only its attention window:
    // audio of any length streams through a small cache.
    n_seqs_ = n_seqs + 1;
    detok_pos_.assign(n_seqs_, 0);
    const int per_seq = std::max(256, (detok_window_ + kDetokBatch + 63) / 64 * 64);
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(per_seq * n_seqs_);
    cp.n_batch = static_cast<uint32_t>(std::max(kDetokBatch, kUpsample * n_seqs_));
    cp.n_ubatch = cp.n_batch;
    cp.n_seq_max = static_cast<uint32_t>(n_seqs_);
    cp.kv_unified = false;
    cp.n_threads = n_threads;
    cp.n_threads_batch = n_threads;
    cp.embeddings = true;
    cp.pooling_type = LLAMA_POOLING_TYPE_NONE;
    cp.type_k = GGML_TYPE_F32;  // a window of 30 positions: full precision costs nothing
    cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.swa_full = false;
    cp.no_perf = true;
    if (!gpu_) cp.op_offload = false;
    detok_ctx_ = llama_init_from_model(detok_model_, cp);
    if (!detok_ctx_) throw engine_error("could not create a context for " + what);
}

// ---------------------------------------------------------------- the audio head graphs
// A graph built and allocated once per (codebook, batch size) and run many times: codebook
// j always attends to positions 0..j of its own row, so nothing is rebuilt per frame.
struct SpeechHead::StaticGraph {
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

std::unique_ptr<SpeechHead::StaticGraph> SpeechHead::new_graph() const {
    auto g = std::make_unique<StaticGraph>();
    g->meta.resize(kGraphSize * ggml_tensor_overhead() + ggml_graph_overhead_custom(kGraphSize, false));
    g->ctx = ggml_init({g->meta.size(), g->meta.data(), /*no_alloc=*/true});
    g->gf = ggml_new_graph_custom(g->ctx, kGraphSize, false);
    return g;
}

void SpeechHead::allocate(StaticGraph& g) const {
    g.alloc = ggml_gallocr_new(ggml_backend_get_default_buffer_type(backends_[0]));
    if (!g.alloc || !ggml_gallocr_alloc_graph(g.alloc, g.gf)) throw engine_error("could not allocate an audio-head graph");
}

void SpeechHead::compute(StaticGraph& g) {
    if (ggml_backend_graph_compute(backends_[0], g.gf) != GGML_STATUS_SUCCESS)
        throw engine_error("the audio head's computation failed");
}

// Codebook j's step for B rows: the depthformer at position j, on slice j of
// depth_linear(hidden) plus the embedding of the previous codebook's code (input `in2`);
// writes position j of each row's KV cache; output: codebook j's logits, one column per row.
SpeechHead::StaticGraph& SpeechHead::step_graph(int j, int B) {
    auto& slot = steps_[{j, B}];
    if (slot) return *slot;
    auto g = new_graph();
    ggml_context* c0 = g->ctx;
    ggml_cgraph* gf = g->gf;
    ggml_tensor* h = g->in = ggml_new_tensor_2d(c0, GGML_TYPE_F32, n_embd_, B);
    ggml_set_input(h);
    ggml_tensor* pos = g->pos = ggml_new_tensor_1d(c0, GGML_TYPE_I32, B);  // every row at position j
    ggml_set_input(pos);

    ggml_tensor* cur = ggml_mul_mat(c0, depth_ws_[j], h);  // [dim, B]
    cur = ggml_add(c0, cur, ggml_view_1d(c0, depth_b_, dim_, static_cast<size_t>(j) * dim_ * ggml_element_size(depth_b_)));
    if (j > 0) {
        g->in2 = ggml_new_tensor_1d(c0, GGML_TYPE_I32, B);
        ggml_set_input(g->in2);
        cur = ggml_add(c0, cur, ggml_get_rows(c0, heads_[j - 1].embd, g->in2));
    }
    const int kv = n_head_kv_ * head_dim_;
    const size_t es = sizeof(float);
    for (const Layer& l : layers_) {
        ggml_tensor* x = cur;
        ggml_tensor* n = ggml_mul(c0, ggml_rms_norm(c0, x, eps_), l.attn_norm);
        ggml_tensor* qkv = ggml_mul_mat(c0, l.wqkv, n);  // [dim + 2 kv, B]
        ggml_tensor* q = ggml_view_3d(c0, qkv, head_dim_, n_head_, B, head_dim_ * es, qkv->nb[1], 0);
        ggml_tensor* k = ggml_view_3d(c0, qkv, head_dim_, n_head_kv_, B, head_dim_ * es, qkv->nb[1], dim_ * es);
        ggml_tensor* v = ggml_view_3d(c0, qkv, head_dim_, n_head_kv_, B, head_dim_ * es, qkv->nb[1], (dim_ + kv) * es);
        q = ggml_mul(c0, ggml_rms_norm(c0, q, eps_), l.q_norm);
        k = ggml_mul(c0, ggml_rms_norm(c0, k, eps_), l.k_norm);
        // liquid-audio's RoPE rotates adjacent pairs: ggml's "normal" mode
        q = ggml_rope_ext(c0, q, pos, nullptr, head_dim_, GGML_ROPE_TYPE_NORMAL, 0, rope_base_, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
        k = ggml_rope_ext(c0, k, pos, nullptr, head_dim_, GGML_ROPE_TYPE_NORMAL, 0, rope_base_, 1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
        // caches are [hd, kv heads, codebook, row]: write codebook j of rows 0..B-1
        ggml_tensor* kc = l.k_cache;
        ggml_tensor* vc = l.v_cache;
        ggml_build_forward_expand(gf, ggml_cpy(c0, v, ggml_view_3d(c0, vc, head_dim_, n_head_kv_, B, vc->nb[1], vc->nb[3], j * vc->nb[2])));
        ggml_build_forward_expand(gf, ggml_cpy(c0, k, ggml_view_3d(c0, kc, head_dim_, n_head_kv_, B, kc->nb[1], kc->nb[3], j * kc->nb[2])));
        ggml_tensor* K = ggml_permute(c0, ggml_view_4d(c0, kc, head_dim_, n_head_kv_, j + 1, B, kc->nb[1], kc->nb[2], kc->nb[3], 0),
                                      0, 2, 1, 3);                                      // [hd, j+1, kv heads, B]
        ggml_tensor* V = ggml_view_4d(c0, vc, head_dim_, n_head_kv_, j + 1, B, vc->nb[1], vc->nb[2], vc->nb[3], 0);
        ggml_tensor* Q = ggml_permute(c0, ggml_reshape_4d(c0, q, head_dim_, n_head_, 1, B), 0, 2, 1, 3);  // [hd, 1, heads, B]
        ggml_tensor* kq = ggml_mul_mat(c0, K, Q);  // [j+1, 1, heads, B]; head h reads KV head h/4
        kq = ggml_soft_max_ext(c0, kq, nullptr, 1.0f / std::sqrt(static_cast<float>(head_dim_)), 0.0f);
        ggml_tensor* Vt = ggml_cont(c0, ggml_permute(c0, V, 1, 2, 0, 3));  // [j+1, hd, kv heads, B]
        ggml_tensor* o = ggml_mul_mat(c0, Vt, kq);                         // [hd, 1, heads, B]
        o = ggml_cont_2d(c0, ggml_permute(c0, o, 0, 2, 1, 3), dim_, B);
        cur = ggml_add(c0, ggml_mul_mat(c0, l.wo, o), x);
        ggml_tensor* f = ggml_mul(c0, ggml_rms_norm(c0, cur, eps_), l.ffn_norm);
        f = ggml_swiglu_split(c0, ggml_mul_mat(c0, l.w1, f), ggml_mul_mat(c0, l.w3, f));  // silu(w1 f) * w3 f
        cur = ggml_add(c0, cur, ggml_mul_mat(c0, l.w2, f));
    }
    const CodebookHead& head = heads_[j];
    g->out = ggml_mul_mat(c0, head.to_logits, ggml_mul(c0, ggml_rms_norm(c0, cur, eps_), head.norm));  // [vocab, B]
    ggml_set_output(g->out);
    ggml_build_forward_expand(gf, g->out);
    allocate(*g);
    slot = std::move(g);
    return *slot;
}

void SpeechHead::frames(const float* hidden, int B, llama_sampler* const* samplers, const Frame* forced, Frame* out,
                        std::vector<float>* logits_out) {
    if (B < 1 || B > max_batch_) throw std::invalid_argument("audio head batch of " + std::to_string(B) + " rows");
    std::vector<float> logits(static_cast<size_t>(n_audio_vocab_) * B);
    std::vector<int32_t> pos(B), prev(B);
    if (logits_out) logits_out->assign(static_cast<size_t>(B) * kCodebooks * n_audio_vocab_, 0.0f);
    for (int j = 0; j < kCodebooks; ++j) {
        StaticGraph& g = step_graph(j, B);
        // every input is set before each run: the allocator reuses an input's memory once it is read
        ggml_backend_tensor_set(g.in, hidden, 0, static_cast<size_t>(n_embd_) * B * sizeof(float));
        std::fill(pos.begin(), pos.end(), j);
        ggml_backend_tensor_set(g.pos, pos.data(), 0, B * sizeof(int32_t));
        if (g.in2) ggml_backend_tensor_set(g.in2, prev.data(), 0, B * sizeof(int32_t));
        compute(g);
        ggml_backend_tensor_get(g.out, logits.data(), 0, logits.size() * sizeof(float));
        for (int b = 0; b < B; ++b) {
            const float* l = logits.data() + static_cast<size_t>(b) * n_audio_vocab_;
            if (logits_out)
                std::memcpy(logits_out->data() + (static_cast<size_t>(b) * kCodebooks + j) * n_audio_vocab_, l,
                            n_audio_vocab_ * sizeof(float));
            const int code = forced ? forced[b][j] : pick(samplers ? samplers[b] : nullptr, l, n_audio_vocab_);
            if (code < 0 || code >= n_audio_vocab_) throw std::invalid_argument("audio code out of range");
            out[b][j] = code;
            prev[b] = code;
        }
    }
}

// The backbone's input for B frames (their codes' audio embeddings, summed) and the
// detokenizer's (their codes' rows of emb.emb, averaged).
SpeechHead::StaticGraph& SpeechHead::embed_graph(int B) {
    auto& slot = embeds_[B];
    if (slot) return *slot;
    auto g = new_graph();
    ggml_context* c0 = g->ctx;
    auto summed = [&](ggml_tensor* table, ggml_tensor* ids, int width) {
        ggml_tensor* rows = ggml_reshape_3d(c0, ggml_get_rows(c0, table, ids), width, kCodebooks, B);  // [w, 8, B]
        ggml_tensor* s = ggml_sum_rows(c0, ggml_cont(c0, ggml_permute(c0, rows, 1, 0, 2, 3)));      // [1, w, B]
        return ggml_reshape_2d(c0, s, width, B);
    };
    g->in = ggml_new_tensor_1d(c0, GGML_TYPE_I32, kCodebooks * B);
    ggml_set_input(g->in);
    g->out = summed(audio_embd_, g->in, n_embd_);
    ggml_set_output(g->out);
    ggml_build_forward_expand(g->gf, g->out);
    g->in2 = ggml_new_tensor_1d(c0, GGML_TYPE_I32, kCodebooks * B);
    ggml_set_input(g->in2);
    g->out2 = ggml_scale(c0, summed(detok_embd_, g->in2, static_cast<int>(detok_embd_->ne[0])), 1.0f / kCodebooks);
    ggml_set_output(g->out2);
    ggml_build_forward_expand(g->gf, g->out2);
    allocate(*g);
    slot = std::move(g);
    return *slot;
}

void SpeechHead::embed(const Frame* codes, int B, std::vector<float>& backbone_in, std::vector<float>* detok_in) {
    for (int b = 0; b < B; ++b)
        for (int c : codes[b]) if (c < 0 || c >= n_audio_vocab_) throw std::invalid_argument("audio codes must be in [0, 2048]");
    StaticGraph& g = embed_graph(B);
    std::vector<int32_t> a(kCodebooks * B), d(kCodebooks * B);
    for (int b = 0; b < B; ++b)
        for (int k = 0; k < kCodebooks; ++k) {
            a[b * kCodebooks + k] = codes[b][k] + k * n_audio_vocab_;
            d[b * kCodebooks + k] = std::min<int>(codes[b][k], kDetokCodes - 1) + k * kDetokCodes;  // unused when a code is 2048
        }
    ggml_backend_tensor_set(g.in, a.data(), 0, a.size() * sizeof(int32_t));
    ggml_backend_tensor_set(g.in2, d.data(), 0, d.size() * sizeof(int32_t));
    compute(g);
    backbone_in.resize(static_cast<size_t>(n_embd_) * B);
    ggml_backend_tensor_get(g.out, backbone_in.data(), 0, backbone_in.size() * sizeof(float));
    if (detok_in) {
        detok_in->resize(static_cast<size_t>(detok_embd_n_) * B);
        ggml_backend_tensor_get(g.out2, detok_in->data(), 0, detok_in->size() * sizeof(float));
    }
}

// ---------------------------------------------------------------- the detokenizer
void SpeechHead::reset(int seq) {
    if (seq < 0 || seq >= n_seqs_) throw std::out_of_range("detokenizer sequence");
    llama_memory_seq_rm(llama_get_memory(detok_ctx_), seq, -1, -1);
    detok_pos_[seq] = 0;
}

// Each listed sequence gets `rows_per_seq` input rows (of detok_embd_n_ floats, sequence
// after sequence in `rows_in`), decoded together; their spectrogram rows are appended in
// the same order.
void SpeechHead::detok_rows(const std::vector<int>& seqs, const float* rows_in, int rows_per_seq, std::vector<float>& spectrum) {
    const int n = static_cast<int>(seqs.size()) * rows_per_seq;
    const int cap = static_cast<int>(llama_n_batch(detok_ctx_));
    if (n > cap) throw std::invalid_argument("too many detokenizer rows for one batch");
    for (int s : seqs) {
        if (s < 0 || s >= n_seqs_) throw std::out_of_range("detokenizer sequence");
        // Positions that left the attention window are never read again: drop them, so the
        // cache (sized for the window) holds any length of audio.
        if (detok_window_ > 0 && detok_pos_[s] > detok_window_)
            llama_memory_seq_rm(llama_get_memory(detok_ctx_), s, 0, detok_pos_[s] - detok_window_);
    }
    RowBatch batch(n);
    batch.set_embd(rows_in);
    for (size_t i = 0; i < seqs.size(); ++i)
        for (int r = 0; r < rows_per_seq; ++r) batch.add_embd_row(detok_pos_[seqs[i]] + r, seqs[i]);
    llama_batch b = batch.get();
    std::vector<int8_t> all(n, 1);
    b.logits = all.data();  // every row is an output
    if (llama_decode(detok_ctx_, b) != 0) throw engine_error("the audio detokenizer failed");
    for (int s : seqs) detok_pos_[s] += rows_per_seq;
    const float* e = llama_get_embeddings(detok_ctx_);
    if (!e) throw engine_error("the audio detokenizer produced no output");
    spectrum.insert(spectrum.end(), e, e + static_cast<size_t>(n) * n_spec_);
}

void SpeechHead::detokenize(const std::vector<int>& seqs, const float* detok_in, std::vector<float>& spectrum) {
    if (seqs.empty()) return;
    std::vector<float> rows(seqs.size() * kUpsample * static_cast<size_t>(detok_embd_n_));
    for (size_t i = 0; i < seqs.size(); ++i)
        for (int r = 0; r < kUpsample; ++r)
            std::memcpy(&rows[(i * kUpsample + r) * detok_embd_n_], detok_in + i * detok_embd_n_, detok_embd_n_ * sizeof(float));
    detok_rows(seqs, rows.data(), kUpsample, spectrum);
}

std::vector<float> SpeechHead::detokenize_fresh(const std::vector<Frame>& frames) {
    for (auto& f : frames)
        for (int c : f) if (c < 0 || c >= kDetokCodes) throw std::invalid_argument("detokenizer codes must be in [0, 2047]");
    const int seq = n_seqs_ - 1;  // the probes' own sequence
    reset(seq);
    std::vector<float> spectrum, tmp, detok_in;
    for (size_t off = 0; off < frames.size(); off += kDetokBatch / kUpsample) {
        const int m = static_cast<int>(std::min(frames.size() - off, static_cast<size_t>(kDetokBatch / kUpsample)));
        std::vector<float> rows;
        for (int f = 0; f < m; ++f) {
            embed(&frames[off + f], 1, tmp, &detok_in);
            for (int r = 0; r < kUpsample; ++r) rows.insert(rows.end(), detok_in.begin(), detok_in.end());
        }
        detok_rows({seq}, rows.data(), m * kUpsample, spectrum);
    }
    reset(seq);
    return spectrum;
}

}  // namespace pylfm
