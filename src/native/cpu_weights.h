// Where model weights live on the CPU, decided per machine; and loading ggml's backends
// when they are separate modules (a portable build).
//
// ggml-cpu offers "extra" buffer types for weights: CPU_REPACK (Q4_0 and others
// re-laid out for faster matrix products), AMX on Intel Xeons with AMX-INT8 (a build with
// GGML_NATIVE or the portable sapphirerapids variant), KleidiAI on some Arm builds.
// llama.cpp puts every weight in the first of them that takes it, AMX first. On Xeons of
// the Sapphire Rapids class the AMX path of llama.cpp 0c1e57098 crashes the process at
// the first matrix product (ggml_backend_amx_mul_mat; llama.cpp #20824, ollama #17205).
// So pylfm decides at load, per policy (PYLFM_CPU_REPACK, or Model(cpu_repack=...)):
//
//   auto    no AMX anywhere. Without an AMX buffer type: llama.cpp's own placement
//           (mode "on"). With one: mode "no-amx".
//   on      llama.cpp's own placement: every extra buffer type, AMX included.
//   off     no extra buffer types at all: plain weights, no repacking.
//   no-amx  extra buffer types off (use_extra_bufts = false), and each weight that is
//           only ever a matrix product's weight goes to the first non-AMX extra buffer
//           type that would run that product (asked the way llama.cpp asks: a dry
//           ggml_mul_mat whose weight sits in a zero-size buffer of that type), through
//           tensor_buft_overrides. A weight the type cannot take is left alone: forcing
//           one there (Q8_0 on x86, f32) aborts at load. The token embedding is never
//           overridden: a pattern matches the tied LM head and the input embedding (a
//           GET_ROWS, which no repacked type runs) alike, so a tied LM head stays plain.
//           Runs on every machine: the path AMX machines take, testable anywhere.
//
// With a GPU every layer is offloaded: "no-amx" (asked, or chosen by auto) becomes "off"
// there, since an override would pull a weight off the GPU.
//
// Everything about the machine is read through ggml's backend registry (get_features,
// the device's extra buffer types), never by linking ggml-cpu: a portable build loads
// ggml-cpu at run time.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace pybind11 { class module_; }

namespace pylfm {

// ---------------------------------------------------------------- backends
// Registers ggml's backends when they are loadable modules (GGML_BACKEND_DL): from the
// folder of libggml itself, else <site-packages>/bin (where llama-cpp-python's wheel puts
// them), else ggml's default search. Nothing happens when a CPU backend is already
// registered (a build that links its backends, the default). Called once by ensure_backend().
void load_backend_modules();

// ---------------------------------------------------------------- facts
struct CpuFacts {
    std::vector<std::string> features;     // the CPU backend's: "AVX2", "AMX_INT8", "SVE_CNT=32", ...
    std::vector<std::string> extra_bufts;  // the CPU device's extra buffer types, in llama.cpp's order
    std::string library;                   // the file the CPU backend runs from (a portable build: its variant)
    std::string description;               // the CPU device's description (the CPU model)
};
CpuFacts cpu_facts();  // of this machine (after ensure_backend)

// A weight of a GGUF file and the extra buffer types whose dry mul_mat the CPU accepts
// with it (only for 2-D weights; empty for the others).
struct WeightFact {
    std::string name;
    std::string type;                 // ggml type name: "q4_0", "f32", ...
    std::vector<std::string> bufts;
};
std::vector<WeightFact> weight_facts(const std::string& gguf_path, const std::vector<std::string>& bufts);

// ---------------------------------------------------------------- the decision
extern const char* const kCpuRepackPolicies[];  // "auto", "on", "off", "no-amx", nullptr
// The policy a value names: "" -> $PYLFM_CPU_REPACK, unset -> "auto"; case and surrounding
// blanks are ignored; anything else -> std::invalid_argument naming the choices.
std::string normalize_policy(const std::string& value);
bool crashing_buft(const std::string& name);       // "AMX"
bool matmul_only_weight(const std::string& name);  // llama.cpp names of weights used only by MUL_MAT

struct CpuWeightPlan {
    std::string policy;  // as asked (normalized)
    std::string mode;    // what is done: "on", "off" or "no-amx"
    std::string reason;  // one line, for the log
    bool use_extra_bufts = true;
    std::vector<std::pair<std::string, std::string>> overrides;  // (regex over tensor names, buffer type name)
    std::map<std::string, std::vector<std::string>> repacked;    // buffer type -> weights the overrides send there
};

// Pure: the same facts give the same plan on any machine (unit-tested through Python).
CpuWeightPlan plan_cpu_weights(const std::string& policy, const CpuFacts& facts,
                               const std::vector<WeightFact>& weights, bool gpu);

// The extra buffer type for a matrix the speech graphs multiply (type, ne0 x ne1), under a
// mode ("on": the first that runs it, as llama.cpp; "no-amx": the first that is not AMX;
// "off": none), or nullptr for the plain CPU buffer.
ggml_backend_buffer_type_t cpu_matrix_buft(const std::string& mode, ggml_type type, int64_t ne0, int64_t ne1);

// ---------------------------------------------------------------- a model load
// Plans a model file's placement, loads it with the plan applied and records what llama.cpp
// reports about its weight buffers. One per loaded model (the text model, the detokenizer).
class CpuWeights {
public:
    // `policy` as normalize_policy takes it; `gpu`: the model's layers go to a GPU.
    // Returns llama_model_load_from_file's result (nullptr on failure).
    llama_model* load_model(const std::string& policy, const std::string& path, llama_model_params params, bool gpu);

    const CpuWeightPlan& plan() const { return plan_; }
    const std::string& policy() const { return plan_.policy; }
    const std::string& mode() const { return plan_.mode; }
    const std::map<std::string, double>& buffers_mib() const { return buffers_; }  // "CPU_REPACK" -> MiB, ...
    std::string summary() const;  // one line: policy, mode, reason, buffers

private:
    CpuWeightPlan plan_{"auto", "on", "", true, {}, {}};
    std::map<std::string, double> buffers_;
};

// Python: _core.cpu_facts, _core.cpu_weight_facts, _core.plan_cpu_weights, Engine.cpu_weights.
void register_cpu_weights(pybind11::module_& m);

}  // namespace pylfm
