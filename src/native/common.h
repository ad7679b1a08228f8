// Shared pieces of the native core: llama.cpp's log routed to Python, UTF-8 that is
// always valid, RAII wrappers for llama.cpp/mtmd handles.
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "llama.h"
#include "mtmd.h"

namespace pylfm {

// ---------------------------------------------------------------- logging
// llama.cpp and mtmd log from any thread, often with the GIL released, so the
// callback never touches Python: it keeps recent lines in a buffer that Python
// drains into `logging` (pop_log) and that error messages quote.
void ensure_backend();                                      // log routing + llama_backend_init, once
std::vector<std::pair<int, std::string>> pop_log();         // (ggml level, line), oldest first
std::string recent_errors(size_t max_lines = 6);            // last warnings/errors, for messages
void set_log_echo(bool on);                                 // also print llama.cpp's log to stderr
void log_line(int level, const std::string& text);          // a line of pylfm's own into the same log

// The lines logged on the calling thread while it lives (what a model load reports).
class LogCapture {
public:
    LogCapture();
    ~LogCapture();
    LogCapture(const LogCapture&) = delete;
    LogCapture& operator=(const LogCapture&) = delete;
    std::vector<std::string> lines() const;

private:
    std::thread::id thread_;
    std::vector<std::string> lines_;
    friend struct LogSink;
};

inline std::runtime_error engine_error(const std::string& what) { return std::runtime_error(what + recent_errors()); }

// ---------------------------------------------------------------- UTF-8
// Token pieces are byte strings that may end inside a multi-byte character or not be
// UTF-8 at all (byte tokens). take_utf8 moves the complete characters at the front of
// `buf` to the result; every ill-formed subsequence (Unicode's "maximal subpart") becomes
// one U+FFFD, as Python's bytes.decode("utf-8", "replace") does. An incomplete character
// at the end stays in `buf` unless `flush`, when it becomes U+FFFD. So the text handed to
// Python is always valid, and streamed pieces join to the final text.
std::string take_utf8(std::string& buf, bool flush);

// ---------------------------------------------------------------- RAII
struct ChunksDeleter { void operator()(mtmd_input_chunks* c) const { mtmd_input_chunks_free(c); } };
struct BitmapDeleter { void operator()(mtmd_bitmap* b) const { mtmd_bitmap_free(b); } };
struct SamplerDeleter { void operator()(llama_sampler* s) const { llama_sampler_free(s); } };
using ChunksPtr = std::unique_ptr<mtmd_input_chunks, ChunksDeleter>;
using BitmapPtr = std::unique_ptr<mtmd_bitmap, BitmapDeleter>;
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

// A llama_batch over caller-owned token or embedding memory, one sequence id per row.
class RowBatch {
public:
    explicit RowBatch(int capacity) : pos_(capacity), n_seq_(capacity, 1), seq_(capacity), seq_ptr_(capacity), logits_(capacity) {
        for (int i = 0; i < capacity; ++i) seq_ptr_[i] = &seq_[i];
        tokens_.resize(capacity);
    }
    void clear() { n_ = 0; embd_ = nullptr; }
    int size() const { return n_; }
    // Adds a token row; returns its row index.
    int add(llama_token t, llama_pos pos, llama_seq_id seq, bool logits) {
        tokens_[n_] = t;
        return put(pos, seq, logits);
    }
    // Rows of embeddings (n_embd floats each, starting at `embd`) instead of tokens.
    void set_embd(const float* embd) { embd_ = embd; }
    int add_embd_row(llama_pos pos, llama_seq_id seq) { return put(pos, seq, false); }
    llama_batch get() {
        llama_batch b{};
        b.n_tokens = n_;
        b.token = embd_ ? nullptr : tokens_.data();
        b.embd = const_cast<float*>(embd_);
        b.pos = pos_.data();
        b.n_seq_id = n_seq_.data();
        b.seq_id = seq_ptr_.data();
        b.logits = logits_.data();
        return b;
    }

private:
    int put(llama_pos pos, llama_seq_id seq, bool logits) {
        pos_[n_] = pos;
        seq_[n_] = seq;
        logits_[n_] = logits ? 1 : 0;
        return n_++;
    }
    int n_ = 0;
    const float* embd_ = nullptr;
    std::vector<llama_token> tokens_;
    std::vector<llama_pos> pos_;
    std::vector<int32_t> n_seq_;
    std::vector<llama_seq_id> seq_;
    std::vector<llama_seq_id*> seq_ptr_;
    std::vector<int8_t> logits_;
};

}  // namespace pylfm
