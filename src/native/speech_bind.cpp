// Python bindings of the speech engine (pylfm._core.SpeechEngine / SpeechParams).

#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bind.h"
#include "speech.h"

namespace py = pybind11;

namespace pylfm {

namespace {

using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
using bind::floats_from;
using bind::parts_from;

Frame frame_from(const py::handle& obj) {
    IntArray a = py::cast<IntArray>(obj);
    if (a.ndim() != 1 || a.size() != kCodebooks) throw std::invalid_argument("a frame is 8 integer codes");
    Frame f;
    std::memcpy(f.data(), a.data(), sizeof f);
    return f;
}

py::array_t<int32_t> frames_array(const std::vector<Frame>& frames) {
    py::array_t<int32_t> out({static_cast<py::ssize_t>(frames.size()), static_cast<py::ssize_t>(kCodebooks)});
    if (!frames.empty()) std::memcpy(out.mutable_data(), frames.data(), frames.size() * sizeof(Frame));
    return out;
}

}  // namespace

void register_speech(py::module_& m) {
    py::class_<SpeechParams>(m, "SpeechParams")
        .def(py::init<>())
        .def_readwrite("interleaved", &SpeechParams::interleaved)
        .def_readwrite("start_audio", &SpeechParams::start_audio)
        .def_readwrite("stop_at_audio_end", &SpeechParams::stop_at_audio_end)
        .def_readwrite("ignore_audio_end", &SpeechParams::ignore_audio_end)
        .def_readwrite("max_new_tokens", &SpeechParams::max_new_tokens)
        .def_readwrite("max_audio_frames", &SpeechParams::max_audio_frames)
        .def_readwrite("text_temperature", &SpeechParams::text_temperature)
        .def_readwrite("text_top_k", &SpeechParams::text_top_k)
        .def_readwrite("audio_temperature", &SpeechParams::audio_temperature)
        .def_readwrite("audio_top_k", &SpeechParams::audio_top_k)
        .def_readwrite("seed", &SpeechParams::seed)
        .def_readwrite("n_text", &SpeechParams::n_text)
        .def_readwrite("n_audio", &SpeechParams::n_audio)
        .def_readwrite("detokenize", &SpeechParams::detokenize);

    py::class_<SpeechEngine>(m, "SpeechEngine")
        .def(py::init([](Engine& engine, const std::string& vocoder, const std::string& detokenizer) {
                 py::gil_scoped_release nogil;
                 return new SpeechEngine(engine, vocoder, detokenizer);
             }),
             py::arg("engine"), py::arg("vocoder"), py::arg("detokenizer"), py::keep_alive<1, 2>(),
             "Speech output on `engine`'s loaded backbone (the engine is kept alive).")
        .def_property_readonly("n_spec", &SpeechEngine::n_spec)
        .def_property_readonly("audio_vocab", &SpeechEngine::audio_vocab)
        .def_property_readonly("depth_layers", &SpeechEngine::depth_layers)
        .def_property_readonly("depth_dim", &SpeechEngine::depth_dim)
        .def_property_readonly("detok_window", &SpeechEngine::detok_window)
        .def_property_readonly("load_ms", &SpeechEngine::load_ms)
        .def("generate", [](SpeechEngine& s, const py::list& parts, const py::list& audio, const SpeechParams& params,
                            py::function on_event, std::shared_ptr<CancelFlag> cancel) {
                 // on_event(kind, text, token, codes, spectrum): kind 0 = text piece, 1 = audio
                 // frame (spectrum: (6, n_spec) float32 or None), 2 = end of audio.
                 std::vector<PromptPart> p = parts_from(parts);
                 std::vector<std::vector<float>> a;
                 for (auto clip : audio) a.push_back(floats_from(clip, "audio"));
                 const py::ssize_t n_spec = s.n_spec();
                 SpeechSink sink = [&](SpeechEvent& ev) {
                     py::gil_scoped_acquire gil;
                     py::object codes = py::none(), spec = py::none();
                     if (ev.kind != SpeechEvent::Text) codes = frames_array({ev.codes}).attr("reshape")(kCodebooks);
                     if (!ev.spectrum.empty()) spec = bind::float_array(ev.spectrum, n_spec);
                     on_event(static_cast<int>(ev.kind), bind::safe_str(ev.text), ev.token, codes, spec);
                 };
                 SpeechResult r;
                 {
                     py::gil_scoped_release nogil;
                     r = s.generate(p, a, params, sink, cancel);
                 }
                 py::dict d;
                 d["text"] = bind::safe_str(r.text);
                 d["tokens"] = r.tokens;
                 d["codes"] = frames_array(r.frames);
                 d["stop_reason"] = r.stop_reason;
                 d["n_prompt_tokens"] = r.n_prompt_tokens;
                 d["encode_ms"] = r.encode_ms;
                 d["prefill_ms"] = r.prefill_ms;
                 d["backbone_ms"] = r.backbone_ms;
                 d["depth_ms"] = r.depth_ms;
                 d["detok_ms"] = r.detok_ms;
                 return d;
             },
             py::arg("parts"), py::arg("audio"), py::arg("params"), py::arg("on_event"), py::arg("cancel") = nullptr,
             "Generates one answer (blocks; the callback gets every step as it happens).")
        .def("depth_logits", [](SpeechEngine& s, const py::handle& hidden, const py::handle& codes) {
                 std::vector<float> h = floats_from(hidden, "hidden");
                 Frame f = frame_from(codes);
                 std::vector<float> out;
                 {
                     py::gil_scoped_release nogil;
                     out = s.depth_logits(h, f);
                 }
                 return bind::float_array(out, s.audio_vocab());
             }, py::arg("hidden"), py::arg("codes"),
             "Depthformer logits (8, 2049) for a hidden state, codebook j conditioned on codes[:j].")
        .def("sample_frame", [](SpeechEngine& s, const py::handle& hidden, float temperature, int top_k, uint32_t seed) {
                 std::vector<float> h = floats_from(hidden, "hidden");
                 Frame f;
                 {
                     py::gil_scoped_release nogil;
                     f = s.sample_frame(h, temperature, top_k, seed);
                 }
                 return frames_array({f}).attr("reshape")(kCodebooks);
             }, py::arg("hidden"), py::arg("temperature") = 0.0f, py::arg("top_k") = 0, py::arg("seed") = 0)
        .def("frame_embedding", [](SpeechEngine& s, const py::handle& codes) {
                 Frame f = frame_from(codes);
                 std::vector<float> out;
                 {
                     py::gil_scoped_release nogil;
                     out = s.frame_embedding(f);
                 }
                 return bind::float_array(out, static_cast<py::ssize_t>(out.size())).attr("reshape")(-1);
             }, py::arg("codes"), "The backbone's input for a frame: its codes' audio embeddings, summed.")
        .def("detokenize", [](SpeechEngine& s, const py::handle& codes) {
                 IntArray a = py::cast<IntArray>(codes);
                 if (a.ndim() != 2 || a.shape(1) != kCodebooks) throw std::invalid_argument("codes must be (frames, 8)");
                 std::vector<Frame> frames(a.shape(0));
                 if (!frames.empty()) std::memcpy(frames.data(), a.data(), frames.size() * sizeof(Frame));
                 std::vector<float> out;
                 {
                     py::gil_scoped_release nogil;
                     out = s.detokenize(frames);
                 }
                 return bind::float_array(out, s.n_spec());
             }, py::arg("codes"), "The detokenizer's spectrogram rows (6 per frame, n_spec each), from a fresh state.");
}

}  // namespace pylfm
