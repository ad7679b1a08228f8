// Where the model's work ran: a recorder of the buffer (ggml backend) each computed
// tensor lives in, per phase and op type: {phase: {op: {buffer: count}}}, for example
// {"encode": {"SSM_CONV": {"CUDA0": 34}}, "decode": {"GET_ROWS": {"CPU": 16}, ...}}.
// It is the evidence that the audio encoder, the prefill and the decode ran on the GPU,
// not silently on the CPU (ggml's scheduler puts an op the GPU backend lacks on the CPU).
//
// It hooks ggml's scheduler through the eval callback of llama_context_params and
// mtmd_context_params. With a callback set, the scheduler synchronizes after every graph
// split, so recording is off unless PYLFM_RECORD_PLACEMENT=1 when the engine is created.
// The callback only looks at each node when asked whether it wants the node's data, and
// always says no: the graph is computed as without it, one piece per split.
#pragma once

#include <map>
#include <mutex>
#include <string>

#include "ggml-backend.h"
#include "llama.h"
#include "mtmd.h"

namespace pylfm {

class PlacementRecorder {
public:
    // phase -> op -> buffer name -> number of computed tensors
    using Counts = std::map<std::string, std::map<std::string, std::map<std::string, long>>>;

    PlacementRecorder();  // enabled by PYLFM_RECORD_PLACEMENT=1 (or "true"/"yes")
    explicit PlacementRecorder(bool enabled) : enabled_(enabled) {}
    PlacementRecorder(const PlacementRecorder&) = delete;
    PlacementRecorder& operator=(const PlacementRecorder&) = delete;

    bool enabled() const { return enabled_; }

    // Record the graphs of a text-model context (phase: the current one, see Phase) or of
    // the audio encoder (phase "encode"). No-ops when disabled.
    void attach(llama_context_params& params);
    void attach(mtmd_context_params& params);

    // Labels the text model's graphs computed while it lives ("prefill", "decode");
    // the previous label comes back when it ends. Scopes nest; one thread at a time.
    class Phase {
    public:
        Phase(PlacementRecorder& r, const char* name);
        ~Phase();
        Phase(const Phase&) = delete;
        Phase& operator=(const Phase&) = delete;

    private:
        PlacementRecorder& r_;
        std::string previous_;
    };
    Phase phase(const char* name) { return Phase(*this, name); }

    Counts snapshot() const;
    void clear();

    // The ggml_backend_sched_eval_callback; user data: a Source of this recorder.
    static bool on_eval(struct ggml_tensor* t, bool ask, void* user_data);

private:
    struct Source {
        PlacementRecorder* self;
        bool encoder;
    };
    void record(const struct ggml_tensor* t, bool encoder);

    bool enabled_ = false;
    Source text_{this, false}, audio_{this, true};
    mutable std::mutex mu_;
    std::string text_phase_ = "text";
    Counts counts_;
};

}  // namespace pylfm
