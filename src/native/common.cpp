#include "common.h"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <mutex>

#include "cpu_weights.h"
#include "ggml-backend.h"
#include "mtmd-helper.h"

namespace pylfm {

struct LogSink {
    std::mutex mu;
    std::deque<std::pair<int, std::string>> lines;  // (ggml level, text)
    std::string partial;                            // a line still being written
    int partial_level = GGML_LOG_LEVEL_INFO;
    bool echo = false;
    std::vector<LogCapture*> captures;

    void captured(const std::string& line) {  // mu held
        for (LogCapture* c : captures)
            if (c->thread_ == std::this_thread::get_id()) c->lines_.push_back(line);
    }
};

namespace {

LogSink g_log;

void log_callback(enum ggml_log_level level, const char* text, void*) {
    std::lock_guard<std::mutex> lock(g_log.mu);
    if (g_log.echo) fputs(text, stderr);
    if (level != GGML_LOG_LEVEL_CONT) g_log.partial_level = level;
    g_log.partial += text;
    size_t nl;
    while ((nl = g_log.partial.find('\n')) != std::string::npos) {
        g_log.lines.emplace_back(g_log.partial_level, g_log.partial.substr(0, nl));
        if (!g_log.captures.empty()) g_log.captured(g_log.lines.back().second);
        g_log.partial.erase(0, nl + 1);
        if (g_log.lines.size() > 400) g_log.lines.pop_front();
    }
}

}  // namespace

void ensure_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
        llama_log_set(log_callback, nullptr);
        mtmd_log_set(log_callback, nullptr);
        mtmd_helper_log_set(log_callback, nullptr);
        load_backend_modules();  // a portable build's backends are modules; see cpu_weights.h
        llama_backend_init();
    });
}

std::vector<std::pair<int, std::string>> pop_log() {
    std::lock_guard<std::mutex> lock(g_log.mu);
    std::vector<std::pair<int, std::string>> out(g_log.lines.begin(), g_log.lines.end());
    g_log.lines.clear();
    return out;
}

std::string recent_errors(size_t max_lines) {
    std::lock_guard<std::mutex> lock(g_log.mu);
    std::vector<std::string> picked;
    for (auto it = g_log.lines.rbegin(); it != g_log.lines.rend() && picked.size() < max_lines; ++it) {
        if (it->first == GGML_LOG_LEVEL_ERROR || it->first == GGML_LOG_LEVEL_WARN) picked.push_back(it->second);
    }
    std::string out;
    for (auto it = picked.rbegin(); it != picked.rend(); ++it) out += "\n  llama.cpp: " + *it;
    return out;
}

void set_log_echo(bool on) {
    std::lock_guard<std::mutex> lock(g_log.mu);
    g_log.echo = on;
}

void log_line(int level, const std::string& text) {
    log_callback(static_cast<ggml_log_level>(level), (text + "\n").c_str(), nullptr);
}

LogCapture::LogCapture() : thread_(std::this_thread::get_id()) {
    std::lock_guard<std::mutex> lock(g_log.mu);
    g_log.captures.push_back(this);
}

LogCapture::~LogCapture() {
    std::lock_guard<std::mutex> lock(g_log.mu);
    g_log.captures.erase(std::remove(g_log.captures.begin(), g_log.captures.end(), this), g_log.captures.end());
}

std::vector<std::string> LogCapture::lines() const {
    std::lock_guard<std::mutex> lock(g_log.mu);
    return lines_;
}

// ---------------------------------------------------------------- UTF-8
namespace {

// How the bytes at s[0..n) begin, by Unicode's table of well-formed UTF-8 byte sequences:
// > 0: a complete character of that many bytes; 0: the first `*bad` bytes are an
// ill-formed maximal subpart; < 0: a valid but incomplete prefix (the end of the input).
int classify(const unsigned char* s, size_t n, size_t* bad) {
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) { len = 3; lo = 0xA0; }               // no overlongs
    else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) len = 3;
    else if (c == 0xED) { len = 3; hi = 0x9F; }               // no surrogates
    else if (c == 0xF0) { len = 4; lo = 0x90; }               // no overlongs
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    else if (c == 0xF4) { len = 4; hi = 0x8F; }               // nothing above U+10FFFF
    else { *bad = 1; return 0; }                              // 80..C1, F5..FF
    for (size_t k = 1; k < len; ++k) {
        if (k >= n) return -1;
        unsigned char b = s[k];
        if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) { *bad = k; return 0; }
    }
    return static_cast<int>(len);
}

}  // namespace

std::string take_utf8(std::string& buf, bool flush) {
    static const char kReplacement[] = "\xEF\xBF\xBD";
    const auto* s = reinterpret_cast<const unsigned char*>(buf.data());
    std::string out;
    size_t i = 0, n = buf.size();
    while (i < n) {
        size_t bad = 0;
        int r = classify(s + i, n - i, &bad);
        if (r > 0) { out.append(buf, i, static_cast<size_t>(r)); i += static_cast<size_t>(r); }
        else if (r == 0) { out += kReplacement; i += bad; }
        else if (flush) { out += kReplacement; i = n; }  // a character cut off for good
        else break;                                       // wait for the rest of the character
    }
    buf.erase(0, i);
    return out;
}

}  // namespace pylfm
