#include "sampling.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace pylfm {

SamplerPtr make_sampler(const Choice& c, int n_vocab) {
    const bool greedy = c.temperature <= 0.0f || c.top_k == 1;
    if (greedy && c.repeat_penalty == 1.0f) return nullptr;
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (c.repeat_penalty != 1.0f)
        llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(n_vocab, c.repeat_last_n, c.repeat_penalty, 0.0f, 0.0f));
    if (greedy) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    if (c.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(c.top_k));
    if (c.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(c.top_p, 1));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(c.temperature));
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(c.seed));
    return chain;
}

int pick(llama_sampler* sampler, const float* logits, int n) {
    if (!sampler) return static_cast<int>(std::max_element(logits, logits + n) - logits);
    thread_local std::vector<llama_token_data> cand;
    cand.resize(n);
    for (int i = 0; i < n; ++i) cand[i] = {i, logits[i], 0.0f};
    llama_token_data_array arr = {cand.data(), cand.size(), -1, false};
    llama_sampler_apply(sampler, &arr);
    if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) throw std::runtime_error("sampling failed");
    const int id = arr.data[arr.selected].id;
    llama_sampler_accept(sampler, id);
    return id;
}

double log_prob(const float* l, int n, int id) {
    float mx = l[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, l[i]);
    double sum = 0;
    for (int i = 0; i < n; ++i)
        if (l[i] > mx - 20.0f) sum += std::exp(static_cast<double>(l[i] - mx));
    return static_cast<double>(l[id] - mx) - std::log(sum);
}

}  // namespace pylfm
