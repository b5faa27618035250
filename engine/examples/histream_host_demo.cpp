// histream-host-demo: the embedded tiny model streamed from C++, a per-chunk table, the frames written as an mp4
// (through the package's writer) or as raw RGB bytes (any other extension).
//
//   histream-host-demo [--frames 45] [--height 256] [--width 256] [--schedule histream] [--seed 0]
//                      [--device cpu] [--attention torch] [--tae taew2_1.pth | --tiny-tae] [--out histream_host_demo.mp4]
//
// Exit codes: 0 written; 2 bad arguments, a refused --out (checked before any model work) or a refused request;
// 1 the output could not be written while streaming (the OS's message; a partial raw file is removed).
#include <histream/histream.hpp>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

namespace {

bool ends_with(const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

const char* const USAGE =
    "usage: histream-host-demo [--frames N] [--height H] [--width W] [--schedule NAME] [--seed N] [--device DEV] "
    "[--attention NAME] [--tae FILE | --tiny-tae] [--out FILE.mp4|FILE.rgb]\n"
    "  streams the embedded tiny model (random weights) and writes its frames: H.264 for .mp4, raw RGB otherwise\n"
    "  --tae FILE  decode with the TAEHV of a taew2_1.pth / taew2_1.safetensors file instead of the tiny Wan VAE\n"
    "  --tiny-tae  decode with an embedded tiny TAEHV (random weights) instead of the tiny Wan VAE\n";

int usage(const std::string& why) {
    std::cerr << "histream-host-demo: " << why << "\n" << USAGE;
    return 2;
}

// The whole of `text` as a decimal integer in [lo, hi], or false: "9x", "", " 9" and out-of-range values are refused.
bool parse_integer(const std::string& text, long long lo, long long hi, long long& out) {
    if (text.empty() || text.front() == ' ' || text.front() == '+') return false;
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (errno == ERANGE || end != text.c_str() + text.size() || v < lo || v > hi) return false;
    out = v;
    return true;
}

struct WriteFailed : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// A raw file cut short by an error is not the video asked for: it goes, as an unclosed mp4 does.
void remove_partial(const std::string& out, bool opened) {
    std::error_code ignored;
    if (opened) std::filesystem::remove(out, ignored);
}

}  // namespace

int main(int argc, char** argv) {
    histream::StreamRequest req;
    histream::DemoOptions demo;
    std::string out = "histream_host_demo.mp4";
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::cout << USAGE;
            return 0;
        }
        if (flag == "--tiny-tae") {
            demo.tiny_tae = true;
            continue;
        }
        if (i + 1 >= argc) return usage("missing value after " + flag);
        const std::string value = argv[++i];
        long long n = 0;
        if (flag == "--frames" || flag == "--height" || flag == "--width") {
            if (!parse_integer(value, 1, INT_MAX, n)) return usage(flag + " takes a positive integer, got '" + value + "'");
            (flag == "--frames" ? req.frames : flag == "--height" ? req.height : req.width) = static_cast<int>(n);
        } else if (flag == "--seed") {
            if (!parse_integer(value, 0, LLONG_MAX, n)) return usage("--seed takes an integer in [0, 2^63), got '" + value + "'");
            req.seed = n;
        } else if (flag == "--schedule") req.schedule = value;
        else if (flag == "--device") demo.device = value;
        else if (flag == "--attention") demo.attention = value;
        else if (flag == "--tae") demo.tae_path = value;
        else if (flag == "--out") out = value;
        else return usage("unknown argument " + flag);
    }
    if (demo.tiny_tae && !demo.tae_path.empty()) return usage("give --tae FILE or --tiny-tae, not both");
    const bool as_mp4 = ends_with(out, ".mp4");
    bool raw_opened = false;
    try {
        histream::Runtime rt;
        // before any model work (the mp4 writer makes missing folders, the raw one does not)
        rt.check_output_file(out, as_mp4 ? ".mp4" : "", /*make_parents=*/as_mp4);
        auto engine = histream::Engine::tiny_demo(rt, demo);
        const std::string decoder = !demo.tae_path.empty() ? "TAEHV " + demo.tae_path
                                    : demo.tiny_tae        ? std::string("tiny TAEHV") : std::string("tiny Wan VAE");
        std::printf("histream-host-demo: histream_engine %s, tiny model (random weights), decoder %s, %d frames at %dx%d, "
                    "schedule %s\n", rt.version().c_str(), decoder.c_str(), req.frames, req.width, req.height,
                    req.schedule.c_str());
        std::unique_ptr<histream::VideoWriter> mp4;
        std::ofstream raw;
        int frames = 0;
        double denoise = 0, vae = 0;
        engine.stream(req, [&](const histream::Chunk& c) {
            if (c.index == 0) {  // the request was checked before this first chunk: only now open the output
                if (as_mp4) mp4 = std::make_unique<histream::VideoWriter>(rt, out, c.width, c.height);
                else {
                    raw.open(out, std::ios::binary);
                    if (!raw.is_open()) throw WriteFailed("cannot open " + out + " for writing: " + std::strerror(errno));
                    raw_opened = true;
                }
                std::printf("%5s  %6s  %9s  %9s  %9s\n", "chunk", "frames", "denoise s", "vae s", "ms/frame");
            }
            if (mp4) mp4->write(c);
            else {
                raw.write(reinterpret_cast<const char*>(c.frames), static_cast<std::streamsize>(c.num_frames) * c.height * c.width * 3);
                if (!raw) throw WriteFailed("cannot write " + out + ": " + std::strerror(errno));
            }
            frames += c.num_frames;
            denoise += c.denoise_seconds;
            vae += c.vae_seconds;
            std::printf("%5d  %6d  %9.3f  %9.3f  %9.1f\n", c.index, c.num_frames, c.denoise_seconds, c.vae_seconds,
                        1e3 * c.denoise_seconds / c.num_frames);
            std::fflush(stdout);
            return true;
        });
        if (mp4) mp4->close();
        if (raw.is_open()) {
            raw.close();
            if (raw.fail()) throw WriteFailed("cannot write " + out + ": " + std::strerror(errno));
        }
        std::printf("%d frames: denoise %.3f s (%.4f s/frame), VAE %.3f s\nwrote %s (%s)\n", frames, denoise,
                    denoise / frames, vae, out.c_str(), as_mp4 ? "H.264 mp4, 16 fps" : "raw RGB bytes, frame after frame");
        return 0;
    } catch (const WriteFailed& e) {
        std::cerr << "histream-host-demo: error: " << e.what() << "\n";
        remove_partial(out, raw_opened);
        return 1;
    } catch (const histream::Error& e) {
        std::cerr << "histream-host-demo: error: " << e.what() << "\n";
        remove_partial(out, raw_opened);
        return 2;
    }
}
