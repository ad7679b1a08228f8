// Choosing the next token or audio code: one sampler factory for every caller.
#pragma once

#include <cstdint>
#include <memory>

#include "common.h"
#include "llama.h"

namespace pylfm {

struct Choice {
    float temperature = 0.0f;  // <= 0: greedy
    int top_k = 0;             // 0: all
    float top_p = 1.0f;
    uint32_t seed = 0;
    float repeat_penalty = 1.0f;  // llama.cpp's penalties over the last repeat_last_n tokens
    int repeat_last_n = 64;
};

// A llama_sampler chain for `c`, or nullptr when the choice is greedy without penalties
// (then `pick` takes the first maximum, as torch.argmax does: liquid-audio's rule).
SamplerPtr make_sampler(const Choice& c, int n_vocab);

// The chosen id among `n` raw logits (sampler may be nullptr: argmax).
int pick(llama_sampler* sampler, const float* logits, int n);

// Natural-log probability of `id` under the raw logits (terms below max - 20 are skipped:
// together they add less than 1e-4).
double log_prob(const float* logits, int n, int id);

}  // namespace pylfm
