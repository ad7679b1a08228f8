// Python bindings of the CPU weight placement (cpu_weights.h).

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cpu_weights.h"
#include "engine.h"
#include "ggml.h"

namespace py = pybind11;

namespace pylfm {

namespace {

py::dict plan_dict(const CpuWeightPlan& p) {
    py::dict d;
    d["policy"] = p.policy;
    d["mode"] = p.mode;
    d["reason"] = p.reason;
    d["use_extra_bufts"] = p.use_extra_bufts;
    py::list overrides;
    for (auto& o : p.overrides) overrides.append(py::make_tuple(o.first, o.second));
    d["overrides"] = overrides;
    d["repacked"] = p.repacked;
    return d;
}

py::dict facts_dict(const CpuFacts& f) {
    py::dict d;
    d["description"] = f.description;
    d["features"] = f.features;
    d["extra_bufts"] = f.extra_bufts;
    d["library"] = f.library;
    bool amx = false;
    for (auto& b : f.extra_bufts) amx = amx || crashing_buft(b);
    for (auto& ft : f.features) amx = amx || ft.rfind("AMX", 0) == 0;
    d["amx"] = amx;
    return d;
}

CpuFacts facts_from(const py::list& features, const py::list& extra_bufts) {
    CpuFacts f;
    for (auto x : features) f.features.push_back(x.cast<std::string>());
    for (auto x : extra_bufts) f.extra_bufts.push_back(x.cast<std::string>());
    return f;
}

}  // namespace

void register_cpu_weights(py::module_& m) {
    m.attr("CPU_REPACK_POLICIES") = [] {
        py::tuple t(4);
        for (int i = 0; i < 4; ++i) t[i] = kCpuRepackPolicies[i];
        return t;
    }();
    m.def("cpu_facts", [] { return facts_dict(cpu_facts()); },
          "This machine's CPU backend: description, features (AVX2, AMX_INT8, ...), extra buffer types "
          "(CPU_REPACK, AMX, ...), the library it runs from (a portable build's variant), amx.");
    m.def("cpu_weight_facts", [](const std::string& path, py::object bufts) {
              std::vector<std::string> names;
              if (bufts.is_none()) names = cpu_facts().extra_bufts;
              else for (auto x : bufts) names.push_back(x.cast<std::string>());
              py::list out;
              for (auto& w : weight_facts(path, names)) out.append(py::make_tuple(w.name, w.type, w.bufts));
              return out;
          },
          py::arg("path"), py::arg("bufts") = py::none(),
          "[(name, ggml type, [extra buffer types whose dry mul_mat this CPU runs with it])] for a GGUF's tensors.");
    m.def("plan_cpu_weights", [](const std::string& policy, const py::list& features, const py::list& extra_bufts,
                                 const py::list& weights, bool gpu) {
              std::vector<WeightFact> ws;
              for (auto item : weights) {
                  auto t = item.cast<py::tuple>();
                  WeightFact w{t[0].cast<std::string>(), t[1].cast<std::string>(), {}};
                  for (auto b : t[2].cast<py::list>()) w.bufts.push_back(b.cast<std::string>());
                  ws.push_back(std::move(w));
              }
              return plan_dict(plan_cpu_weights(policy, facts_from(features, extra_bufts), ws, gpu));
          },
          py::arg("policy"), py::arg("features"), py::arg("extra_bufts"), py::arg("weights"), py::arg("gpu") = false,
          "The placement decision from CPU facts alone (the logic the engine applies at load): policy auto|on|off|"
          "no-amx; weights as cpu_weight_facts returns them. -> {policy, mode, reason, use_extra_bufts, overrides, "
          "repacked}.");
    m.def("cpu_matrix_buft", [](const std::string& mode, const std::string& type, int64_t ne0, int64_t ne1) -> py::object {
              for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
                  const char* name = ggml_type_name(static_cast<ggml_type>(t));
                  if (!name || type != name) continue;
                  ggml_backend_buffer_type_t b = cpu_matrix_buft(mode, static_cast<ggml_type>(t), ne0, ne1);
                  return b ? py::object(py::str(ggml_backend_buft_name(b))) : py::object(py::none());
              }
              throw std::invalid_argument("unknown ggml type '" + type + "'");
          },
          py::arg("mode"), py::arg("type"), py::arg("ne0"), py::arg("ne1"),
          "The extra buffer type the speech graphs keep a (type, ne0 x ne1) matrix in under a mode (on, off, "
          "no-amx), or None for the plain CPU buffer.");
    m.def("normalize_cpu_repack", &normalize_policy, py::arg("value") = "",
          "The policy a value names (\"\": $PYLFM_CPU_REPACK, else auto); ValueError for others.");

    auto engine = py::reinterpret_borrow<py::class_<Engine>>(m.attr("Engine"));
    engine.def_property_readonly("cpu_weights", [](const Engine& e) {
        const CpuWeights& w = e.cpu_weights();
        py::dict d = plan_dict(w.plan());
        d["buffers_mib"] = w.buffers_mib();
        d["summary"] = w.summary();
        return d;
    }, "Where the text model's weights went: {policy, mode, reason, use_extra_bufts, overrides, repacked, buffers_mib, summary}.");
}

}  // namespace pylfm
