// ctest cases for the C++ host API, one per process (each starts its own interpreter): host_tests CASE.
#include <histream/histream.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
    if (!ok) {
        std::fprintf(stderr, "FAILED: %s\n", what.c_str());
        ++failures;
    }
}

histream::StreamRequest small(int frames = 33) {  // 3 chunks of the tiny model at 64x96: a second each on a CPU
    histream::StreamRequest r;
    r.frames = frames;
    r.height = 64;
    r.width = 96;
    r.schedule = "histream_plus";
    return r;
}

struct Collected {
    std::vector<int> indices;
    std::vector<std::vector<uint8_t>> frames;
    int total_frames = 0;
};

Collected collect(histream::Engine& engine, const histream::StreamRequest& r, int stop_after = -1) {
    Collected out;
    const int delivered = engine.stream(r, [&](const histream::Chunk& c) {
        check(c.frames != nullptr && c.height == r.height && c.width == r.width && c.num_frames > 0, "chunk geometry");
        out.indices.push_back(c.index);
        out.frames.emplace_back(c.frames, c.frames + static_cast<size_t>(c.num_frames) * c.height * c.width * 3);
        out.total_frames += c.num_frames;
        check(c.denoise_seconds > 0 && c.vae_seconds > 0, "chunk timings");
        return stop_after < 0 || static_cast<int>(out.indices.size()) < stop_after;
    });
    check(delivered == static_cast<int>(out.indices.size()), "stream() returns the chunks delivered");
    return out;
}

void demo_stream() {
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    const Collected got = collect(engine, small());
    check(got.indices == std::vector<int>({0, 1, 2}), "three chunks, in order");
    check(got.total_frames == 33, "33 frames in all (1 + 4 * 8)");
    const auto& first = got.frames.front();
    const auto [lo, hi] = std::minmax_element(first.begin(), first.end());
    check(*lo != *hi, "frames are not constant");
}

void cancel() {
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    const Collected cut = collect(engine, small(), 1);
    check(cut.indices == std::vector<int>({0}), "returning false stops after that chunk");
    const Collected full = collect(engine, small());
    check(full.indices.size() == 3 && full.frames[0] == cut.frames[0], "the next stream runs whole, from the start");
}

void expect_error(const std::function<void()>& f, const std::string& needle, const std::string& what) {
    try {
        f();
        check(false, what + ": no error");
    } catch (const histream::Error& e) {
        check(std::string(e.what()).find(needle) != std::string::npos, what + ": message '" + e.what() + "' lacks '" + needle + "'");
    }
}

void bad_request() {
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    auto never = [](const histream::Chunk&) { check(false, "a bad request delivered a chunk"); return true; };
    auto frames44 = small(44);
    expect_error([&] { engine.stream(frames44, never); }, "4k+1", "44 frames");
    auto odd = small();
    odd.height = 72;  // a multiple of 16, not of 32: histream_plus has low-res steps
    expect_error([&] { engine.stream(odd, never); }, "32", "height 72 with low-res steps");
    auto text = small();
    text.prompt = "a red fox";
    expect_error([&] { engine.stream(text, never); }, "no text encoder", "a prompt to the tiny model");
    auto schedule = small();
    schedule.schedule = "warp_speed";
    expect_error([&] { engine.stream(schedule, never); }, "warp_speed", "an unknown schedule");
    histream::EngineOptions missing;
    missing.model_dir = "/nonexistent/Wan2.1-T2V-1.3B";
    expect_error([&] { histream::Engine::open(rt, missing); }, "/nonexistent/Wan2.1-T2V-1.3B does not exist", "a missing model folder");
    check(collect(engine, small()).indices.size() == 3, "the engine streams after the errors");
}

// The tiny model written in Wan's folder layout by the host.model_dir fixture (make_model_dir.py).
histream::EngineOptions fixture_options(std::string& root) {
    const char* dir = std::getenv("HISTREAM_TEST_MODEL_DIR");
    check(dir != nullptr, "HISTREAM_TEST_MODEL_DIR is set (by ctest)");
    root = dir ? dir : "";
    histream::EngineOptions o;
    o.model_dir = root + "/model";
    o.dtype = "float32";
    o.device = "cpu";
    o.text_encoder = false;
    return o;
}

void open_model_dir() {
    histream::Runtime rt;
    std::string root;
    histream::EngineOptions options = fixture_options(root);
    auto engine = histream::Engine::open(rt, options);
    auto r = small();
    r.prompt_embeds_path = root + "/prompt.safetensors";
    check(collect(engine, r).total_frames == 33, "a model folder streams from precomputed embeddings");
    r.prompt_embeds_path = root + "/absent.safetensors";
    expect_error([&] { engine.stream(r, [](const histream::Chunk&) { return true; }); }, "absent.safetensors does not exist",
                 "missing embeddings");
    auto no_prompt = small();
    expect_error([&] { engine.stream(no_prompt, [](const histream::Chunk&) { return true; }); }, "neither a prompt nor",
                 "a request without a prompt");
    options.checkpoint = root + "/corrupt.pt";
    expect_error([&] { histream::Engine::open(rt, options); }, "The file is corrupt", "a corrupt checkpoint");
    options.checkpoint.clear();
    options.dtype = "float64";
    expect_error([&] { histream::Engine::open(rt, options); }, "unknown dtype 'float64'", "an unsupported dtype");
    r.prompt_embeds_path = root + "/prompt.safetensors";
    check(collect(engine, r).total_frames == 33, "the engine streams after the errors");
}

void two_threads() {
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    std::mutex m;
    std::vector<std::pair<int, int>> seen;  // (thread, chunk index) in arrival order
    auto worker = [&](int id) {
        for (int n = 0; n < 2; ++n)
            engine.stream(small(21), [&](const histream::Chunk& c) {
                std::lock_guard<std::mutex> lock(m);
                seen.emplace_back(id, c.index);
                return true;
            });
    };
    std::thread a(worker, 0), b(worker, 1);
    a.join();
    b.join();
    check(seen.size() == 8, "2 threads x 2 streams x 2 chunks");
    for (size_t i = 0; i + 1 < seen.size(); i += 2)  // streams take turns: each one's chunks arrive together
        check(seen[i].first == seen[i + 1].first && seen[i].second == 0 && seen[i + 1].second == 1, "streams do not interleave");
}

void two_engines() {
    histream::Runtime rt;
    auto first = histream::Engine::tiny_demo(rt);
    histream::Runtime joined;  // a second Runtime shares the interpreter
    auto second = histream::Engine::tiny_demo(joined);
    check(collect(first, small(21)).frames == collect(second, small(21)).frames, "two engines in one process, same frames");
}

void video_writer() {
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    const auto dir = std::filesystem::temp_directory_path();
    const auto done = dir / "histream_host_test.mp4", dropped = dir / "histream_host_dropped.mp4";
    std::filesystem::remove(done);
    {
        histream::VideoWriter mp4(rt, done.string(), 96, 64);
        engine.stream(small(), [&](const histream::Chunk& c) { mp4.write(c); return true; });
        mp4.close();
    }
    check(std::filesystem::exists(done) && std::filesystem::file_size(done) > 1000, "the closed mp4 is written");
    {
        histream::VideoWriter mp4(rt, dropped.string(), 96, 64);
        engine.stream(small(), [&](const histream::Chunk& c) { mp4.write(c); return false; });
    }
    check(!std::filesystem::exists(dropped), "an mp4 never closed leaves no file");
    std::filesystem::remove(done);
}

// A Runtime whose import fails throws, and leaves no thread holding the interpreter: a second try from another
// thread fails the same way instead of waiting forever for the lock.
void failed_start() {
    const auto dir = std::filesystem::temp_directory_path() / "histream_broken_package";
    std::filesystem::create_directories(dir / "histream_engine");
    {
        std::FILE* f = std::fopen((dir / "histream_engine" / "__init__.py").c_str(), "w");
        std::fputs("raise ImportError('broken on purpose')\n", f);
        std::fclose(f);
    }
    setenv("HISTREAM_PYTHONPATH", dir.c_str(), 1);
    expect_error([] { histream::Runtime rt; }, "broken on purpose", "a package that fails to import");
    auto second = std::async(std::launch::async, [] {
        try {
            histream::Runtime rt;
        } catch (const histream::Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    });
    if (second.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
        std::fprintf(stderr, "FAILED: a second Runtime on another thread hangs\n");
        std::_Exit(1);  // the stuck thread cannot be joined
    }
    check(second.get().find("broken on purpose") != std::string::npos, "the second try reports the same failure");
    std::filesystem::remove_all(dir);
}

}  // namespace

int main(int argc, char** argv) {
    const std::map<std::string, void (*)()> cases = {
        {"demo_stream", demo_stream}, {"cancel", cancel}, {"bad_request", bad_request}, {"open_model_dir", open_model_dir},
        {"two_threads", two_threads}, {"two_engines", two_engines}, {"video_writer", video_writer},
        {"failed_start", failed_start}};
    if (argc != 2 || !cases.count(argv[1])) {
        std::fprintf(stderr, "usage: host_tests CASE (demo_stream, cancel, bad_request, open_model_dir, two_threads, two_engines, video_writer, failed_start)\n");
        return 2;
    }
    try {
        cases.at(argv[1])();
    } catch (const histream::Error& e) {
        std::fprintf(stderr, "FAILED: unexpected histream::Error: %s\n", e.what());
        return 1;
    }
    std::printf("%s: %s\n", argv[1], failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
