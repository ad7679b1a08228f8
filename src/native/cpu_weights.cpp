#include "cpu_weights.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <regex>
#include <sstream>
#include <stdexcept>

#include "common.h"
#include "ggml.h"
#include "gguf.h"

#if defined(__unix__) || defined(__APPLE__)
#include <dlfcn.h>
#define PYLFM_HAVE_DLADDR 1
#endif

namespace pylfm {

namespace {

// The file a function of a loaded library comes from, or "".
std::string library_of(const void* fn) {
#ifdef PYLFM_HAVE_DLADDR
    Dl_info info{};
    if (fn && dladdr(fn, &info) && info.dli_fname) {
        char* real = realpath(info.dli_fname, nullptr);
        std::string out = real ? real : info.dli_fname;
        std::free(real);
        return out;
    }
#else
    (void)fn;
#endif
    return "";
}

std::string folder_of(const std::string& file) {
    auto slash = file.find_last_of("/\\");
    return slash == std::string::npos ? std::string() : file.substr(0, slash);
}

ggml_backend_dev_t cpu_device() { return ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU); }

std::vector<ggml_backend_buffer_type_t> extra_bufts() {
    std::vector<ggml_backend_buffer_type_t> out;
    ggml_backend_dev_t dev = cpu_device();
    if (!dev) return out;
    auto get = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
    for (ggml_backend_buffer_type_t* b = get ? get(dev) : nullptr; b && *b; ++b) out.push_back(*b);
    return out;
}

ggml_backend_buffer_type_t extra_buft_named(const std::string& name) {
    for (auto* b : extra_bufts())
        if (name == ggml_backend_buft_name(b)) return b;
    return nullptr;
}

struct CtxDeleter { void operator()(ggml_context* c) const { ggml_free(c); } };
using CtxPtr = std::unique_ptr<ggml_context, CtxDeleter>;

// Would the CPU run mul_mat(w, x) with a weight of this type and shape held in `buft`?
// llama.cpp's own question when it places a weight: a dry op (no data), the weight in a
// zero-size buffer of that type, 512 rows of f32 activations.
bool mul_mat_runs_in(ggml_backend_buffer_type_t buft, ggml_type type, int64_t ne0, int64_t ne1) {
    ggml_backend_dev_t dev = cpu_device();
    if (!dev || !buft) return false;
    if (ne0 % ggml_blck_size(type) != 0) return false;
    CtxPtr ctx(ggml_init({8 * ggml_tensor_overhead(), nullptr, true}));
    ggml_tensor* w = ggml_new_tensor_2d(ctx.get(), type, ne0, ne1);
    ggml_tensor* x = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, ne0, 512);
    ggml_tensor* op = ggml_mul_mat(ctx.get(), w, x);
    ggml_backend_buffer_t probe = ggml_backend_buft_alloc_buffer(buft, 0);
    if (!probe) return false;
    w->buffer = probe;
    const bool ok = ggml_backend_dev_supports_op(dev, op);
    w->buffer = nullptr;
    ggml_backend_buffer_free(probe);
    return ok;
}

std::string lower_trimmed(const std::string& s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    std::string out = a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
    return std::find(v.begin(), v.end(), x) != v.end();
}

std::string joined(const std::vector<std::string>& v, const char* sep = ", ") {
    std::string out;
    for (auto& s : v) out += (out.empty() ? "" : sep) + s;
    return out;
}

std::string regex_escaped(const std::string& s) {
    static const std::string special = R"(\^$.|?*+()[]{}/)";
    std::string out;
    for (char c : s) {
        if (special.find(c) != std::string::npos) out += '\\';
        out += c;
    }
    return out;
}

// Anchored patterns that match exactly `names`: one per name shape, with the block
// numbers of "blk.N.<rest>" names listed ("^blk\.(?:0|2|5)\.ffn_up\.weight$").
std::vector<std::string> patterns_for(const std::vector<std::string>& names) {
    std::map<std::string, std::vector<std::string>> blocks;  // rest -> block numbers, in order met
    std::vector<std::string> order, out;
    static const std::regex blk(R"(^blk\.([0-9]+)\.(.+)$)");
    for (const auto& n : names) {
        std::smatch m;
        if (std::regex_match(n, m, blk)) {
            const std::string rest = m[2];
            if (!blocks.count(rest)) order.push_back(rest);
            blocks[rest].push_back(m[1]);
        } else {
            out.push_back("^" + regex_escaped(n) + "$");
        }
    }
    for (const auto& rest : order)
        out.push_back("^blk\\.(?:" + joined(blocks[rest], "|") + ")\\." + regex_escaped(rest) + "$");
    return out;
}

std::string env_policy() {
    const char* v = std::getenv("PYLFM_CPU_REPACK");
    return v ? std::string(v) : std::string();
}

}  // namespace

// ---------------------------------------------------------------- backends
void load_backend_modules() {
    if (cpu_device()) return;  // the backends are linked in (the default build)
    // Portable builds (GGML_BACKEND_DL): the backends are modules, libggml-cpu-<variant>.so
    // etc. ggml's own default search looks in the executable's folder (python's) and the
    // working directory; llama-cpp-python's wheel puts them in <site-packages>/bin (ggml
    // installs them to CMAKE_INSTALL_BINDIR), two folders up from libggml in
    // <site-packages>/llama_cpp/lib. Look next to libggml first, then there, then ggml's way.
    const std::string lib = folder_of(library_of(reinterpret_cast<const void*>(&ggml_backend_load_all_from_path)));
    std::vector<std::string> tried;
    if (!lib.empty()) {
        for (const std::string& dir : {lib, lib + "/../../bin"}) {
            tried.push_back(dir);
            ggml_backend_load_all_from_path(dir.c_str());
            if (cpu_device()) return;
        }
    }
    ggml_backend_load_all();  // GGML_BACKEND_DIR (a build setting), the executable's folder, the cwd
    if (!cpu_device())
        log_line(GGML_LOG_LEVEL_ERROR, "pylfm: no CPU backend could be loaded (looked in " + joined(tried) +
                                           ", GGML_BACKEND_DIR, the executable's folder and the working directory)");
}

// ---------------------------------------------------------------- facts
CpuFacts cpu_facts() {
    ensure_backend();
    CpuFacts f;
    ggml_backend_dev_t dev = cpu_device();
    if (!dev) return f;
    f.description = ggml_backend_dev_description(dev);
    ggml_backend_reg_t reg = ggml_backend_dev_backend_reg(dev);
    void* get_features = ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features");
    if (get_features) {
        auto fn = reinterpret_cast<ggml_backend_get_features_t>(get_features);
        for (ggml_backend_feature* ft = fn(reg); ft && ft->name; ++ft) {
            std::string v = ft->value ? ft->value : "";
            if (v == "0") continue;
            f.features.push_back(v == "1" || v.empty() ? std::string(ft->name) : std::string(ft->name) + "=" + v);
        }
        f.library = library_of(get_features);
    }
    for (auto* b : extra_bufts()) f.extra_bufts.push_back(ggml_backend_buft_name(b));
    return f;
}

std::vector<WeightFact> weight_facts(const std::string& gguf_path, const std::vector<std::string>& bufts) {
    ggml_context* meta = nullptr;
    gguf_init_params gp = {/*no_alloc=*/true, &meta};
    gguf_context* g = gguf_init_from_file(gguf_path.c_str(), gp);
    if (!g) throw std::invalid_argument("could not read the GGUF header of '" + gguf_path + "'");
    CtxPtr meta_owner(meta);
    std::vector<ggml_backend_buffer_type_t> types;
    for (auto& n : bufts) types.push_back(extra_buft_named(n));
    std::vector<WeightFact> out;
    const int64_t n = gguf_get_n_tensors(g);
    for (int64_t i = 0; i < n; ++i) {
        const char* name = gguf_get_tensor_name(g, i);
        const ggml_tensor* t = ggml_get_tensor(meta, name);
        if (!t) continue;
        WeightFact w{name, ggml_type_name(t->type), {}};
        if (ggml_n_dims(t) == 2) {
            for (size_t k = 0; k < bufts.size(); ++k)
                if (mul_mat_runs_in(types[k], t->type, t->ne[0], t->ne[1])) w.bufts.push_back(bufts[k]);
        }
        out.push_back(std::move(w));
    }
    gguf_free(g);
    return out;
}

// ---------------------------------------------------------------- the decision
const char* const kCpuRepackPolicies[] = {"auto", "on", "off", "no-amx", nullptr};

std::string normalize_policy(const std::string& value) {
    std::string v = lower_trimmed(value.empty() ? env_policy() : value);
    if (v.empty()) return "auto";
    for (const char* const* p = kCpuRepackPolicies; *p; ++p)
        if (v == *p) return v;
    throw std::invalid_argument("CPU weight placement '" + value + "' (cpu_repack / PYLFM_CPU_REPACK) is not one of "
                                "auto, on, off, no-amx");
}

bool crashing_buft(const std::string& name) { return name == "AMX"; }

bool matmul_only_weight(const std::string& name) {
    // llama.cpp's tensor names (llama-arch.cpp) whose only op is MUL_MAT. The token
    // embedding is not among them: tied, it is the LM head and the input embedding at once.
    static const std::regex re(
        R"(^(blk\.[0-9]+\.(attn_q|attn_k|attn_v|attn_qkv|attn_output|attn_gate|ffn_gate|ffn_up|ffn_down|)"
        R"(shortconv\.in_proj|shortconv\.out_proj|ssm_in|ssm_out)|output|dense_2|dense_3)\.weight$)");
    return std::regex_match(name, re);
}

CpuWeightPlan plan_cpu_weights(const std::string& policy, const CpuFacts& facts,
                               const std::vector<WeightFact>& weights, bool gpu) {
    CpuWeightPlan plan;
    plan.policy = normalize_policy(policy.empty() ? std::string("auto") : policy);
    std::vector<std::string> crashing;
    for (auto& b : facts.extra_bufts)
        if (crashing_buft(b)) crashing.push_back(b);
    const std::string extras = facts.extra_bufts.empty() ? "none" : joined(facts.extra_bufts);

    if (plan.policy == "on" || (plan.policy == "auto" && crashing.empty())) {
        plan.mode = "on";
        plan.use_extra_bufts = true;
        plan.reason = plan.policy == "on"
            ? "asked for llama.cpp's own placement (extra buffer types: " + extras + ")" +
                  (crashing.empty() ? "" : "; AMX included, whose matrix product crashes on Sapphire Rapids-class Xeons")
            : "no AMX buffer type on this CPU: llama.cpp's own placement (extra buffer types: " + extras + ")";
        return plan;
    }
    plan.use_extra_bufts = false;
    if (plan.policy == "off") {
        plan.mode = "off";
        plan.reason = "asked for plain weights (no extra buffer types, no repacking)";
        return plan;
    }
    const std::string why = plan.policy == "auto" ? "this CPU has the AMX buffer type, whose matrix product crashes "
                                                    "(llama.cpp #20824)"
                                                  : "asked for no AMX";
    if (gpu) {
        plan.mode = "off";
        plan.reason = why + "; the layers are on the GPU, so the CPU's extra buffer types are simply off";
        return plan;
    }
    plan.mode = "no-amx";
    std::map<std::string, std::vector<std::string>> chosen;
    std::vector<std::string> order;
    for (const auto& w : weights) {
        if (!matmul_only_weight(w.name)) continue;
        for (const auto& b : w.bufts) {
            if (crashing_buft(b) || !contains(facts.extra_bufts, b)) continue;
            if (!chosen.count(b)) order.push_back(b);
            chosen[b].push_back(w.name);
            break;
        }
    }
    size_t n = 0;
    for (const auto& b : order) {
        for (auto& p : patterns_for(chosen[b])) plan.overrides.emplace_back(p, b);
        n += chosen[b].size();
    }
    plan.repacked = std::move(chosen);
    std::string where;
    for (const auto& b : order) where += (where.empty() ? "" : ", ") + std::to_string(plan.repacked[b].size()) + " to " + b;
    plan.reason = why + "; extra buffer types off, " +
                  (n ? "matrix weights the repacked layout runs overridden (" + where + ")"
                     : std::string("no weight of this file has a repacked layout here"));
    return plan;
}

// ---------------------------------------------------------------- speech graphs
ggml_backend_buffer_type_t cpu_matrix_buft(const std::string& mode, ggml_type type, int64_t ne0, int64_t ne1) {
    if (mode == "off") return nullptr;
    for (auto* b : extra_bufts()) {
        if (mode != "on" && crashing_buft(ggml_backend_buft_name(b))) continue;
        if (mul_mat_runs_in(b, type, ne0, ne1)) return b;
    }
    return nullptr;
}

// ---------------------------------------------------------------- a model load
llama_model* CpuWeights::load_model(const std::string& policy, const std::string& path, llama_model_params params,
                                    bool gpu) {
    const CpuFacts facts = cpu_facts();
    std::string asked = normalize_policy(policy);
    // Reading the file's tensors costs a header read: only when weights will be placed by hand.
    bool by_hand = !gpu && (asked == "no-amx" ||
                            (asked == "auto" && std::any_of(facts.extra_bufts.begin(), facts.extra_bufts.end(), crashing_buft)));
    std::vector<WeightFact> weights;
    if (by_hand) {
        std::vector<std::string> usable;
        for (auto& b : facts.extra_bufts)
            if (!crashing_buft(b)) usable.push_back(b);
        weights = weight_facts(path, usable);
    }
    plan_ = plan_cpu_weights(asked, facts, weights, gpu);

    // llama.cpp reads the overrides during the load only; they live until it returns.
    std::vector<llama_model_tensor_buft_override> overrides;
    for (auto& o : plan_.overrides) {
        ggml_backend_buffer_type_t b = extra_buft_named(o.second);
        if (b) overrides.push_back({o.first.c_str(), b});
    }
    overrides.push_back({nullptr, nullptr});
    params.use_extra_bufts = plan_.use_extra_bufts;
    if (overrides.size() > 1) params.tensor_buft_overrides = overrides.data();

    llama_model* model;
    std::vector<std::string> lines;
    {
        LogCapture capture;
        model = llama_model_load_from_file(path.c_str(), params);
        lines = capture.lines();
    }
    // "load_tensors:   CPU_REPACK model buffer size =   150.00 MiB"
    static const std::regex size_line(R"(\s(\S+) model buffer size\s*=\s*([0-9.]+) MiB)");
    buffers_.clear();
    for (auto& l : lines) {
        std::smatch m;
        if (std::regex_search(l, m, size_line)) buffers_[m[1]] += std::atof(m[2].str().c_str());
    }
    std::string file = path.substr(path.find_last_of("/\\") + 1);
    log_line(GGML_LOG_LEVEL_INFO, "pylfm: CPU weights of " + file + ": " + summary());
    return model;
}

std::string CpuWeights::summary() const {
    std::ostringstream s;
    s << "policy " << plan_.policy << " -> " << plan_.mode << " (" << plan_.reason << ")";
    if (!buffers_.empty()) {
        s << "; buffers:";
        for (auto& b : buffers_) s << " " << b.first << " " << b.second << " MiB";
    }
    return s.str();
}

}  // namespace pylfm
