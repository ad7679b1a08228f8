// Python bindings of speech output: SpeechParams (a speech request's settings) and the
// SpeechHead's probes (tests and fidelity checks; call them on the engine's thread).

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bind.h"
#include "engine.h"
#include "speech.h"

namespace py = pybind11;

namespace pylfm {

void register_speech(py::module_& m) {
    using bind::floats_from;
    using bind::frame_from;
    using bind::frames_array;
    using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

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

    py::class_<SpeechHead>(m, "SpeechHead", "The audio head and detokenizer loaded on an Engine (Engine.speech).")
        .def_property_readonly("n_spec", &SpeechHead::n_spec)
        .def_property_readonly("audio_vocab", &SpeechHead::audio_vocab)
        .def_property_readonly("depth_layers", &SpeechHead::depth_layers)
        .def_property_readonly("depth_dim", &SpeechHead::depth_dim)
        .def_property_readonly("detok_window", &SpeechHead::detok_window)
        .def_property_readonly("load_ms", &SpeechHead::load_ms)
        .def("depth_logits", [](SpeechHead& s, const py::handle& hidden, const py::handle& codes) {
                 std::vector<float> h = floats_from(hidden, "hidden");
                 if (static_cast<int>(h.size()) != s.n_embd()) throw std::invalid_argument("hidden must have n_embd values");
                 Frame f = frame_from(codes), out;
                 std::vector<float> logits;
                 {
                     py::gil_scoped_release nogil;
                     s.frames(h.data(), 1, nullptr, &f, &out, &logits);
                 }
                 return bind::float_array(logits, s.audio_vocab());
             }, py::arg("hidden"), py::arg("codes"),
             "Depthformer logits (8, 2049) for a hidden state, codebook j conditioned on codes[:j].")
        .def("sample_frame", [](SpeechHead& s, const py::handle& hidden, float temperature, int top_k, uint32_t seed) {
                 std::vector<float> h = floats_from(hidden, "hidden");
                 if (static_cast<int>(h.size()) != s.n_embd()) throw std::invalid_argument("hidden must have n_embd values");
                 Choice c;
                 c.temperature = temperature;
                 c.top_k = top_k;
                 c.seed = seed;
                 SamplerPtr smpl = make_sampler(c, s.audio_vocab());
                 llama_sampler* raw = smpl.get();
                 Frame f;
                 {
                     py::gil_scoped_release nogil;
                     s.frames(h.data(), 1, &raw, nullptr, &f);
                 }
                 return frames_array({f}).attr("reshape")(kCodebooks);
             }, py::arg("hidden"), py::arg("temperature") = 0.0f, py::arg("top_k") = 0, py::arg("seed") = 0)
        .def("frame_embedding", [](SpeechHead& s, const py::handle& codes) {
                 Frame f = frame_from(codes);
                 std::vector<float> out;
                 {
                     py::gil_scoped_release nogil;
                     s.embed(&f, 1, out, nullptr);
                 }
                 return bind::float_array(out, 0);
             }, py::arg("codes"), "The backbone's input for a frame: its codes' audio embeddings, summed.")
        .def("detokenize", [](SpeechHead& s, const py::handle& codes) {
                 IntArray a = py::cast<IntArray>(codes);
                 if (a.ndim() != 2 || a.shape(1) != kCodebooks) throw std::invalid_argument("codes must be (frames, 8)");
                 std::vector<Frame> frames(a.shape(0));
                 if (!frames.empty()) std::memcpy(frames.data(), a.data(), frames.size() * sizeof(Frame));
                 std::vector<float> out;
                 {
                     py::gil_scoped_release nogil;
                     out = s.detokenize_fresh(frames);
                 }
                 return bind::float_array(out, s.n_spec());
             }, py::arg("codes"), "The detokenizer's spectrogram rows (6 per frame, n_spec each), from a fresh state.");
}

}  // namespace pylfm
