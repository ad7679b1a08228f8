#include "token_embd.h"

#include <cstring>
#include <memory>
#include <stdexcept>

#include "gguf.h"

#ifdef _WIN32
#include <fstream>
#include <vector>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

namespace pylfm {

TokenEmbeddings::~TokenEmbeddings() {
#ifdef _WIN32
    delete[] static_cast<uint8_t*>(map_);
#else
    if (map_) munmap(map_, map_size_);
#endif
}

void TokenEmbeddings::open(const std::string& path, int n_embd) {
    gguf_init_params gp = {/*no_alloc=*/true, nullptr};
    std::unique_ptr<gguf_context, void (*)(gguf_context*)> g(gguf_init_from_file(path.c_str(), gp), gguf_free);
    if (!g) throw std::runtime_error("could not read the GGUF header of '" + path + "'");
    const int64_t id = gguf_find_tensor(g.get(), "token_embd.weight");
    if (id < 0) throw std::runtime_error("'" + path + "' has no token_embd.weight");
    type_ = gguf_get_tensor_type(g.get(), id);
    const ggml_type_traits* tr = ggml_get_type_traits(type_);
    if (type_ != GGML_TYPE_F32 && (!tr || !tr->to_float))
        throw std::runtime_error("token_embd.weight has a type without a CPU dequantizer");
    if (n_embd % ggml_blck_size(type_) != 0) throw std::runtime_error("token_embd.weight has an odd row size");
    row_bytes_ = ggml_row_size(type_, n_embd);
    const size_t offset = gguf_get_data_offset(g.get()) + gguf_get_tensor_offset(g.get(), id);
    const size_t size = gguf_get_tensor_size(g.get(), id);
    if (size % row_bytes_ != 0) throw std::runtime_error("token_embd.weight does not have " + std::to_string(n_embd) + " columns");
    n_rows_ = static_cast<int64_t>(size / row_bytes_);
    n_embd_ = n_embd;
#ifdef _WIN32
    std::ifstream f(path, std::ios::binary);
    auto* buf = new uint8_t[size];
    f.seekg(static_cast<std::streamoff>(offset));
    f.read(reinterpret_cast<char*>(buf), static_cast<std::streamsize>(size));
    if (!f) { delete[] buf; throw std::runtime_error("could not read token_embd.weight from '" + path + "'"); }
    map_ = buf;
    map_size_ = size;
    base_ = buf;
#else
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw std::runtime_error("could not open '" + path + "'");
    struct stat st;
    if (fstat(fd, &st) != 0 || static_cast<size_t>(st.st_size) < offset + size) {
        ::close(fd);
        throw std::runtime_error("'" + path + "' is truncated");
    }
    void* m = mmap(nullptr, static_cast<size_t>(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (m == MAP_FAILED) throw std::runtime_error("could not map '" + path + "'");
    map_ = m;
    map_size_ = static_cast<size_t>(st.st_size);
    base_ = static_cast<const uint8_t*>(m) + offset;
#endif
}

void TokenEmbeddings::row(llama_token t, float* out) const {
    if (t < 0 || t >= n_rows_) throw std::out_of_range("token id out of range");
    const uint8_t* src = base_ + static_cast<size_t>(t) * row_bytes_;
    if (type_ == GGML_TYPE_F32) std::memcpy(out, src, row_bytes_);
    else ggml_get_type_traits(type_)->to_float(src, out, n_embd_);
}

}  // namespace pylfm
