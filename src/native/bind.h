// Conversions between Python objects and the native types, shared by the engine's and the
// speech engine's bindings (module.cpp, speech_bind.cpp).
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine.h"

namespace pylfm {
namespace bind {

namespace py = pybind11;
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;

// A 1-D float32 array (any float/int array is converted) as a vector.
inline std::vector<float> floats_from(const py::handle& obj, const char* what) {
    FloatArray a = py::cast<FloatArray>(obj);
    if (a.ndim() != 1) throw std::invalid_argument(std::string(what) + " must be a 1-D float32 array");
    return std::vector<float>(a.data(), a.data() + a.size());
}

// A prompt as pylfm's prompt module encodes it: (text: str, special: bool) tuples, ints (an
// index into the request's audio clips), 1-D integer arrays (token ids taken as they
// are) and (n, 8) integer arrays (audio frames the model produced).
inline std::vector<PromptPart> parts_from(const py::list& items) {
    using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
    std::vector<PromptPart> parts;
    for (auto item : items) {
        PromptPart p;
        if (py::isinstance<py::int_>(item)) {
            p.kind = PromptPart::Audio;
            p.audio = item.cast<int>();
        } else if (py::isinstance<py::array>(item)) {
            IntArray a = py::cast<IntArray>(item);
            if (a.ndim() == 1) {
                p.kind = PromptPart::Tokens;
                p.tokens.assign(a.data(), a.data() + a.size());
            } else if (a.ndim() == 2 && a.shape(1) == kCodebooks) {
                p.kind = PromptPart::Frames;
                p.frames.resize(a.shape(0));
                if (a.size()) std::memcpy(p.frames.data(), a.data(), a.size() * sizeof(int32_t));
            } else {
                throw std::invalid_argument("a prompt array must be token ids (1-D) or audio frames (n, 8)");
            }
        } else {
            auto t = item.cast<py::tuple>();
            p.text = t[0].cast<std::string>();
            p.special = t[1].cast<bool>();
        }
        parts.push_back(std::move(p));
    }
    return parts;
}

inline std::vector<std::vector<float>> audio_from(const py::list& items) {
    std::vector<std::vector<float>> out;
    for (auto a : items) out.push_back(floats_from(a, "audio"));
    return out;
}

inline py::array_t<int32_t> frames_array(const std::vector<Frame>& frames) {
    py::array_t<int32_t> out({static_cast<py::ssize_t>(frames.size()), static_cast<py::ssize_t>(kCodebooks)});
    if (!frames.empty()) std::memcpy(out.mutable_data(), frames.data(), frames.size() * sizeof(Frame));
    return out;
}

inline Frame frame_from(const py::handle& obj) {
    using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;
    IntArray a = py::cast<IntArray>(obj);
    if (a.ndim() != 1 || a.size() != kCodebooks) throw std::invalid_argument("a frame is 8 integer codes");
    Frame f;
    std::memcpy(f.data(), a.data(), sizeof f);
    return f;
}

// A row-major (rows = size / cols, cols) array, or 1-D when cols is 0.
inline py::array_t<float> float_array(const std::vector<float>& v, py::ssize_t cols) {
    py::array_t<float> out = cols ? py::array_t<float>({static_cast<py::ssize_t>(v.size()) / cols, cols})
                                  : py::array_t<float>(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
    return out;
}

// Text from llama.cpp (its log, model output, a path) may hold any bytes: never fail on it.
inline py::str safe_str(const std::string& s) {
    return py::reinterpret_steal<py::str>(
        PyUnicode_DecodeUTF8(s.data(), static_cast<py::ssize_t>(s.size()), "replace"));
}

}  // namespace bind
}  // namespace pylfm
