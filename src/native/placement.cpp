#include "placement.h"

#include <cstdlib>
#include <cstring>

#include "ggml.h"

namespace pylfm {

namespace {

bool env_enabled() {
    const char* v = std::getenv("PYLFM_RECORD_PLACEMENT");
    return v && (!std::strcmp(v, "1") || !std::strcmp(v, "true") || !std::strcmp(v, "yes"));
}

// Nodes that compute nothing: they only re-describe another tensor's memory.
bool is_view(const ggml_tensor* t) {
    switch (t->op) {
        case GGML_OP_NONE:
        case GGML_OP_VIEW:
        case GGML_OP_RESHAPE:
        case GGML_OP_PERMUTE:
        case GGML_OP_TRANSPOSE:
            return true;
        default:
            return false;
    }
}

}  // namespace

PlacementRecorder::PlacementRecorder() : enabled_(env_enabled()) {}

void PlacementRecorder::attach(llama_context_params& params) {
    if (!enabled_) return;
    params.cb_eval = &PlacementRecorder::on_eval;
    params.cb_eval_user_data = &text_;
}

void PlacementRecorder::attach(mtmd_context_params& params) {
    if (!enabled_) return;
    params.cb_eval = &PlacementRecorder::on_eval;
    params.cb_eval_user_data = &audio_;
}

PlacementRecorder::Phase::Phase(PlacementRecorder& r, const char* name) : r_(r) {
    std::lock_guard<std::mutex> lock(r_.mu_);
    previous_ = r_.text_phase_;
    r_.text_phase_ = name;
}

PlacementRecorder::Phase::~Phase() {
    std::lock_guard<std::mutex> lock(r_.mu_);
    r_.text_phase_ = previous_;
}

bool PlacementRecorder::on_eval(ggml_tensor* t, bool ask, void* user_data) {
    // The scheduler asks about every node before computing its split ("ask"), and calls
    // again with the data only for nodes we asked for; we never ask, so each node is seen once.
    if (ask && t) {
        auto* src = static_cast<Source*>(user_data);
        src->self->record(t, src->encoder);
    }
    return false;
}

void PlacementRecorder::record(const ggml_tensor* t, bool encoder) {
    if (is_view(t)) return;
    // The buffer the result is written to belongs to the backend that computes the op
    // (a CPU op writes to a CPU or host buffer, a CUDA op to a CUDAn buffer).
    const char* where = t->buffer ? ggml_backend_buffer_name(t->buffer) : "unallocated";
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[encoder ? "encode" : text_phase_][ggml_op_desc(t)][where];
}

PlacementRecorder::Counts PlacementRecorder::snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return counts_;
}

void PlacementRecorder::clear() {
    std::lock_guard<std::mutex> lock(mu_);
    counts_.clear();
}

}  // namespace pylfm
