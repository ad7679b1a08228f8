// pylfm._core: Python bindings of the native engine.
//
// The C++ owns the engine loop (engine.cpp); Python owns audio I/O, prompts, window
// planning, which request runs next, joining results, formats and the CLI.
// Every call that does engine work releases the GIL.

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <future>

#include "bind.h"
#include "common.h"
#include "cpu_weights.h"
#include "engine.h"
#include "speech.h"

namespace pylfm {
void register_speech(pybind11::module_& m);
}

namespace py = pybind11;
using namespace pylfm;

namespace {

using bind::audio_from;
using bind::floats_from;
using bind::frames_array;
using bind::parts_from;
using bind::safe_str;

// One reference to a Python object, released with the GIL held by whichever thread ends
// its holder (C++ tasks outlive the call that made them).
struct PyRef {
    PyObject* obj;
    explicit PyRef(PyObject* o) : obj(o) {}
    PyRef(const PyRef&) = delete;
    PyRef& operator=(const PyRef&) = delete;
    ~PyRef() {
        if (obj && Py_IsInitialized()) {
            py::gil_scoped_acquire gil;
            Py_DECREF(obj);
        }
    }
};

py::dict result_dict(const Result& r) {
    py::dict d;
    d["text"] = safe_str(r.text);
    d["tokens"] = r.tokens;
    d["codes"] = frames_array(r.frames);
    d["order"] = r.order;
    d["n_fed"] = r.n_fed;
    d["stop_reason"] = r.stop_reason;
    d["n_prompt_tokens"] = r.n_prompt_tokens;
    d["n_audio_tokens"] = r.n_audio_tokens;
    d["n_past"] = r.n_past;
    d["turn_taken"] = r.turn_taken;
    d["encode_ms"] = r.encode_ms;
    d["prefill_ms"] = r.prefill_ms;
    d["decode_ms"] = r.decode_ms;
    d["depth_ms"] = r.depth_ms;
    d["detok_ms"] = r.detok_ms;
    d["sum_logprob"] = r.sum_logprob;
    return d;
}

py::dict system_info() {
    ensure_backend();
    py::list backends, devices;
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) backends.append(std::string(ggml_backend_reg_name(ggml_backend_reg_get(i))));
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        py::dict dd;
        dd["name"] = std::string(ggml_backend_dev_name(d));
        dd["description"] = std::string(ggml_backend_dev_description(d));
        dd["backend"] = std::string(ggml_backend_reg_name(ggml_backend_dev_backend_reg(d)));
        auto t = ggml_backend_dev_type(d);
        dd["type"] = t == GGML_BACKEND_DEVICE_TYPE_CPU ? "cpu" : t == GGML_BACKEND_DEVICE_TYPE_ACCEL ? "accel" : "gpu";
        size_t free_b = 0, total_b = 0;
        ggml_backend_dev_memory(d, &free_b, &total_b);
        dd["memory_total"] = total_b;
        devices.append(dd);
    }
    py::dict out;
    out["backends"] = backends;
    out["devices"] = devices;
    out["gpu_offload"] = llama_supports_gpu_offload();
    out["llama_system_info"] = std::string(llama_print_system_info());
    return out;
}

void quantize(const std::string& src, const std::string& dst, int ftype, int n_threads) {
    ensure_backend();
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = static_cast<llama_ftype>(ftype);
    p.nthread = n_threads;
    uint32_t rc;
    {
        py::gil_scoped_release nogil;
        rc = llama_model_quantize(src.c_str(), dst.c_str(), &p);
    }
    if (rc != 0) throw engine_error("quantizing '" + src + "' failed");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "pylfm native core: LFM2-Audio inference over llama.cpp's libllama + libmtmd";

    register_speech(m);

    py::class_<SamplingParams>(m, "SamplingParams")
        .def(py::init<>())
        .def_readwrite("max_new_tokens", &SamplingParams::max_new_tokens)
        .def_readwrite("temperature", &SamplingParams::temperature)
        .def_readwrite("top_k", &SamplingParams::top_k)
        .def_readwrite("top_p", &SamplingParams::top_p)
        .def_readwrite("seed", &SamplingParams::seed)
        .def_readwrite("ignore_eos", &SamplingParams::ignore_eos)
        .def_readwrite("repeat_penalty", &SamplingParams::repeat_penalty)
        .def_readwrite("repeat_last_n", &SamplingParams::repeat_last_n)
        .def_readwrite("loop_max_period", &SamplingParams::loop_max_period)
        .def_readwrite("loop_min_repeats", &SamplingParams::loop_min_repeats)
        .def_readwrite("loop_min_span", &SamplingParams::loop_min_span);

    py::class_<CancelFlag, std::shared_ptr<CancelFlag>>(m, "CancelFlag",
                                                        "An atomic flag the engine reads at every step, without the GIL.")
        .def(py::init<>())
        .def("set", [](CancelFlag& f) { f.set.store(true); })
        .def_property_readonly("is_set", [](const CancelFlag& f) { return f.set.load(); });

    py::class_<Engine>(m, "Engine")
        .def(py::init([](const std::string& model, const std::string& mmproj, int n_threads, const std::string& device,
                         int n_ctx_seq, int n_batch, int n_slots, bool flash_attn, bool grow_ctx,
                         const std::string& cpu_repack) {
                 py::gil_scoped_release nogil;
                 return new Engine(model, mmproj, n_threads, device, n_ctx_seq, n_batch, n_slots, flash_attn, grow_ctx,
                                   cpu_repack);
             }),
             py::arg("model"), py::arg("mmproj"), py::arg("n_threads"), py::arg("device"), py::arg("n_ctx_seq"),
             py::arg("n_batch"), py::arg("n_slots"), py::arg("flash_attn"), py::arg("grow_ctx"),
             py::arg("cpu_repack") = "")
        .def_property_readonly("sample_rate", &Engine::sample_rate)
        .def_property_readonly("n_vocab", &Engine::n_vocab)
        .def_property_readonly("n_embd", &Engine::n_embd)
        .def_property_readonly("n_ctx_seq", &Engine::n_ctx_seq)
        .def_property_readonly("max_ctx_seq", &Engine::max_ctx_seq)
        .def_property_readonly("n_slots", &Engine::n_slots)
        .def_property_readonly("load_ms", &Engine::load_ms)
        .def_property_readonly("device", &Engine::device)
        .def_property_readonly("description", &Engine::description)
        .def_property_readonly("failure", &Engine::failure, "Why the loop stopped, if it failed ('' otherwise).")
        .def("token_piece", [](const Engine& e, int token, bool special) { return py::bytes(e.token_piece(token, special)); },
             py::arg("token"), py::arg("special") = true)
        .def("is_eog", &Engine::is_eog)
        .def("placement", [](Engine& e) { return e.placement().snapshot(); },
             "{phase: {op: {buffer: count}}} of the graphs computed so far (PYLFM_RECORD_PLACEMENT=1), phases "
             "encode/prefill/decode; the buffer names the backend (CPU, CUDA0, ...).")
        .def("clear_placement", [](Engine& e) { e.placement().clear(); })
        .def("stats", [](const Engine& e) {
                 auto st = e.stats();
                 py::dict d;
                 d["decode_steps"] = st.decode_steps;
                 d["decode_rows"] = st.decode_rows;
                 d["max_rows"] = st.max_rows;
                 d["audio_rows"] = st.audio_rows;
                 d["text_rows"] = st.text_rows;
                 return d;
             },
             "Generation-loop counters since load: llama_decode steps, sequence rows they advanced, the most rows "
             "in one step (how many sequences really decoded together), and rows that made an audio frame or a token.")
        .def("count_tokens", &Engine::count_tokens, py::arg("text"), py::arg("special") = false)
        .def("tokenize_text", &Engine::tokenize_text, py::arg("text"), py::arg("special") = false)
        .def("submit", [](Engine& e, uint64_t id, const py::list& parts, const py::list& audio, const SamplingParams& params,
                          std::shared_ptr<CancelFlag> cancel, const SpeechParams* speech, int session) {
                 Request r;
                 r.id = id;
                 r.parts = parts_from(parts);
                 r.audio = audio_from(audio);
                 r.params = params;
                 if (speech) { r.speech = true; r.speech_params = *speech; }
                 r.session = session;
                 r.cancel = std::move(cancel);
                 py::gil_scoped_release nogil;
                 e.submit(std::move(r));
             },
             py::arg("id"), py::arg("parts"), py::arg("audio"), py::arg("params"), py::arg("cancel"),
             py::arg("speech") = nullptr, py::arg("session") = -1,
             "Queue a request (speech generation when `speech` params are given; in a session's sequence when "
             "`session` >= 0); its events reach the callback given to run().")
        .def("run", [](Engine& e, py::function on_events) {
                 // Events go to Python once per turn: [(kind, id, payload)], kind 0 = text piece (payload
                 // (str, token)), 1 = done (payload dict), 2 = error (payload message), 3 = audio frame (payload
                 // (codes int32[8], spectrum float32[6, n_spec] or None, end_of_audio)).
                 EventSink sink = [&on_events](std::vector<Event>& events) {
                     py::gil_scoped_acquire gil;
                     py::list out;
                     for (auto& ev : events) {
                         py::object payload;
                         switch (ev.kind) {
                             case Event::Piece: payload = py::make_tuple(safe_str(ev.text), ev.token); break;
                             case Event::Done: payload = result_dict(*ev.result); break;
                             case Event::Error: payload = safe_str(ev.text); break;
                             case Event::Audio: {
                                 py::object spec = py::none();
                                 if (!ev.spectrum.empty()) {
                                     const py::ssize_t cols = static_cast<py::ssize_t>(ev.spectrum.size() / kUpsample);
                                     spec = bind::float_array(ev.spectrum, cols);
                                 }
                                 payload = py::make_tuple(frames_array({ev.codes}).attr("reshape")(kCodebooks), spec,
                                                          ev.audio_end);
                                 break;
                             }
                         }
                         out.append(py::make_tuple(static_cast<int>(ev.kind), ev.id, payload));
                     }
                     try {
                         on_events(out);
                     } catch (py::error_already_set& err) {
                         err.discard_as_unraisable("pylfm engine event callback");
                     }
                 };
                 py::gil_scoped_release nogil;
                 e.run(sink);
             },
             "The scheduler loop: blocks until shutdown() (or a failure: see `failure`); run it on one thread.")
        .def("shutdown", &Engine::shutdown, py::call_guard<py::gil_scoped_release>())
        .def("inject_failure", &Engine::inject_failure,
             "Tests: the loop fails at its next turn as an internal error would (every request then ends with it).")
        .def("call", [](Engine& e, py::function fn, std::shared_ptr<CancelFlag> cancel) {
                 // fn must not raise (pylfm's scheduler wraps it). The task holds one reference,
                 // dropped with the GIL held wherever the task ends: after running, or unrun when
                 // the engine shuts down.
                 auto ref = std::make_shared<PyRef>(fn.release().ptr());
                 std::future<void> done;
                 {
                     py::gil_scoped_release nogil;
                     done = e.post([ref] {
                         py::gil_scoped_acquire gil;
                         try {
                             py::handle(ref->obj)();
                         } catch (py::error_already_set& err) {
                             err.discard_as_unraisable("pylfm engine task");
                         }
                     });
                 }
                 // Wait without the GIL; every 100 ms look for Ctrl-C: it cancels the task
                 // through its flag, and is raised once the task has ended.
                 PyObject *et = nullptr, *ev = nullptr, *tb = nullptr;
                 {
                     py::gil_scoped_release nogil;
                     while (done.wait_for(std::chrono::milliseconds(100)) != std::future_status::ready) {
                         py::gil_scoped_acquire gil;
                         if (!et && PyErr_CheckSignals() != 0) {
                             PyErr_Fetch(&et, &ev, &tb);
                             if (cancel) cancel->set.store(true);
                         }
                     }
                 }
                 if (et) {
                     PyErr_Restore(et, ev, tb);
                     throw py::error_already_set();
                 }
                 try {
                     done.get();
                 } catch (const std::future_error&) {
                     // the loop ended before running it: shut down, or stopped by a failure
                     const std::string why = e.failure();
                     if (!why.empty()) throw std::runtime_error("the engine stopped after an error (" + why + ")");
                     throw std::runtime_error("the engine has been shut down");
                 }
             },
             py::arg("fn"), py::arg("cancel") = nullptr,
             "Runs fn() on the engine loop's thread between steps and waits for it (Ctrl-C sets `cancel`).")
        // ---- the calls below run on the loop's thread (through `call`)
        .def("open_session", &Engine::open_session, py::call_guard<py::gil_scoped_release>(),
             "Reserves a slot whose sequence keeps its history between requests; -1 when none is free.")
        .def("close_session", &Engine::close_session, py::call_guard<py::gil_scoped_release>())
        .def("rollback_session", &Engine::rollback_session, py::call_guard<py::gil_scoped_release>(),
             "Back to the checkpoint taken at the start of the session's last reply.")
        .def("reset_session", &Engine::reset_session, py::call_guard<py::gil_scoped_release>())
        .def("undo_turn", &Engine::undo_turn, py::call_guard<py::gil_scoped_release>(),
             "Back to before the session's last request took its prompt in (a turn read ahead).")
        .def("session_n_past", &Engine::session_n_past)
        .def("session_busy", &Engine::session_busy)
        .def("load_speech", &Engine::load_speech, py::arg("vocoder"), py::arg("detokenizer"),
             py::call_guard<py::gil_scoped_release>(), "Loads the audio head (vocoder GGUF) and the detokenizer GGUF.")
        .def_property_readonly("speech", [](Engine& e) { return e.speech(); }, py::return_value_policy::reference_internal,
                               "The loaded SpeechHead, or None.")
        .def("prompt_tokens", [](Engine& e, const py::list& parts, const py::list& audio) {
            auto p = parts_from(parts);
            auto a = audio_from(audio);
            py::gil_scoped_release nogil;
            return e.prompt_tokens(p, a);
        })
        .def("encode_audio", [](Engine& e, const py::handle& pcm) {
            std::vector<float> a = floats_from(pcm, "audio");
            size_t n = 0;
            std::vector<float> embd;
            {
                py::gil_scoped_release nogil;
                embd = e.encode_audio(a, n);
            }
            return bind::float_array(embd, e.n_embd());
        })
        .def("first_logits", [](Engine& e, const py::list& parts, const py::list& audio) {
            auto p = parts_from(parts);
            auto a = audio_from(audio);
            std::vector<float> l;
            {
                py::gil_scoped_release nogil;
                l = e.first_logits(p, a);
            }
            return bind::float_array(l, 0);
        });

    m.def("system_info", &system_info, "Compiled-in backends and visible devices.");
    m.def("quantize", &quantize, py::arg("src"), py::arg("dst"), py::arg("ftype"), py::arg("n_threads") = 0,
          "Quantize a text-model GGUF with llama_model_quantize.");
    m.def("set_verbose", [](bool on) { ensure_backend(); set_log_echo(on); }, "Echo llama.cpp's log to stderr.");
    m.def("pop_log", [] {
        py::list out;
        for (auto& l : pop_log()) out.append(py::make_tuple(l.first, l.second));
        return out;
    }, "Drain buffered (level, line) log records.");
    m.def("media_marker", [] { return std::string(mtmd_default_marker()); });
    m.def("sanitize_utf8", [](const py::bytes& data, bool flush) {
        std::string buf = data;
        std::string text = take_utf8(buf, flush);
        return py::make_tuple(py::str(text), py::bytes(buf));
    }, py::arg("data"), py::arg("flush") = true,
       "The engine's byte -> text rule: (valid text, bytes of an unfinished character kept back).");
    register_cpu_weights(m);  // after Engine: adds Engine.cpu_weights
}
