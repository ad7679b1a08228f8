// Facts about LFM2-Audio and llama.cpp's engine that the native core depends on, each
// defined once.
#pragma once

#include <array>
#include <cstdint>

#include "llama.h"

namespace pylfm {

// llama.cpp's LFM2A encoder has a fixed relative-position table: more than ~327 s of audio
// in one clip aborts the process (a GGML_ASSERT). Refuse long before that.
constexpr double kMaxClipSeconds = 320.0;

// Token ids liquid-audio's generation loop hard-codes (LFM2's tokenizer).
constexpr llama_token kImStart = 6;       // <|im_start|>
constexpr llama_token kImEnd = 7;         // <|im_end|>
constexpr llama_token kAudioStart = 128;  // <|audio_start|>
constexpr llama_token kTextEnd = 130;     // <|text_end|>

// Audio output: 8 codebooks per 80 ms frame; code 2048 (in codebook 0) ends the audio.
constexpr int kCodebooks = 8;
constexpr int kEndOfAudio = 2048;
constexpr int kDetokCodes = 2048;  // rows per codebook in the detokenizer's code table
constexpr int kUpsample = 6;       // detokenizer frames per code frame

using Frame = std::array<int32_t, kCodebooks>;

}  // namespace pylfm
