// The text model's token embedding rows, read from its GGUF file.
//
// A llama_batch holds either token ids or embeddings, never both. A decode step that
// advances a speech sequence with an audio frame (an embedding) and other sequences with
// text tokens therefore hands llama.cpp embeddings for all rows: a text token's row is
// dequantized here exactly as llama.cpp's own GET_ROWS would (ggml's to_float of the
// tensor's type), so the model sees the same numbers either way. The file is mapped, not
// read: its pages are shared with llama.cpp's own mapping of the same file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ggml.h"
#include "llama.h"

namespace pylfm {

class TokenEmbeddings {
public:
    TokenEmbeddings() = default;
    ~TokenEmbeddings();
    TokenEmbeddings(const TokenEmbeddings&) = delete;
    TokenEmbeddings& operator=(const TokenEmbeddings&) = delete;

    // Maps `gguf_path` and finds token_embd.weight; throws if the file does not hold it
    // with `n_embd` columns.
    void open(const std::string& gguf_path, int n_embd);
    bool ready() const { return base_ != nullptr; }
    // Writes the n_embd floats of token `t` to `out`.
    void row(llama_token t, float* out) const;

private:
    void* map_ = nullptr;
    size_t map_size_ = 0;
    const uint8_t* base_ = nullptr;  // first row
    size_t row_bytes_ = 0;
    int64_t n_rows_ = 0;
    int n_embd_ = 0;
    ggml_type type_ = GGML_TYPE_F32;
};

}  // namespace pylfm
