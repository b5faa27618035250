// ctest cases for the C++ host API, one per process (each starts its own interpreter): host_tests CASE.
#include <histream/histream.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <iterator>
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

std::vector<uint8_t> bytes_of(const histream::Chunk& c) {
    return std::vector<uint8_t>(c.frames, c.frames + static_cast<size_t>(c.num_frames) * c.height * c.width * 3);
}

// A bounded request through the handle: the callback form's chunks, then none; the engine's turn while it is open.
void stream_handle() {
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    const Collected expected = collect(engine, small());
    auto frames44 = small(44);
    expect_error([&] { engine.open_stream(frames44); }, "4k+1", "44 frames, refused at open");
    std::vector<int> indices;
    {
        histream::Stream stream = engine.open_stream(small());
        expect_error([&] { engine.open_stream(small()); }, "this thread already runs a stream on this engine",
                     "a second stream on the thread holding the engine");
        // another thread's stream waits for this one to end
        std::atomic<bool> last_delivered{false}, other_ran_early{false};
        std::thread other([&] {
            engine.stream(small(21), [&](const histream::Chunk&) {
                if (!last_delivered) other_ran_early = true;
                return true;
            });
        });
        while (auto c = stream.next()) {
            check(c->index < 3 && bytes_of(*c) == expected.frames[c->index], "the handle's chunks are the callback form's");
            check(!c->prompt_switch, "no switch reported without a set_prompt");
            indices.push_back(c->index);
            if (c->index == 2) last_delivered = true;  // the next next() ends the stream and gives the engine back
        }
        check(!stream.next(), "none again after the end");
        expect_error([&] { stream.set_prompt("", "x.safetensors"); }, "this stream has ended", "a switch after the end");
        other.join();
        check(!other_ran_early, "a second thread's stream ran only once the handle had ended");
    }
    check(indices == std::vector<int>({0, 1, 2}), "three chunks through next(), in order");
    histream::Stream unread = engine.open_stream(small());  // never read: its turn goes back on close, not on first use
    unread.close();
    unread.close();
    check(!unread.next(), "a closed stream returns none");
    check(collect(engine, small()).frames == expected.frames, "the engine streams the same after the handles");
}

histream::StreamRequest live() {  // until closed
    histream::StreamRequest r = small();
    r.live = true;
    return r;
}

// A live stream switched once (with a re-cache) and closed, against the same stream left alone.
void live_switch() {
    histream::Runtime rt;
    std::string root;
    fixture_options(root);
    auto engine = histream::Engine::tiny_demo(rt);
    std::vector<std::vector<uint8_t>> plain;
    {
        histream::Stream stream = engine.open_stream(live());
        for (int i = 0; i < 3; ++i) plain.push_back(bytes_of(*stream.next()));
    }  // destroyed: closed
    histream::Stream stream = engine.open_stream(live());
    std::vector<int> sizes;
    std::vector<bool> switched;
    while (auto c = stream.next()) {
        sizes.push_back(c->num_frames);
        switched.push_back(bool(c->prompt_switch));
        if (c->index < 2) check(bytes_of(*c) == plain[c->index], "chunks before the switch are the plain stream's");
        if (c->index == 1) stream.set_prompt("", root + "/prompt.safetensors", true);
        if (c->index == 2) {
            check(bytes_of(*c) != plain[2], "the chunk after the switch follows the new prompt");
            check(c->prompt_switch && c->prompt_switch->recache && c->prompt_switch->forwards > 0 &&
                      c->prompt_switch->seconds > 0,
                  "the chunk after the switch reports it: re-cached, with its forwards and seconds");
        }
        if (c->index == 4) stream.close();
        check(c->index < 5, "no chunk after close()");
    }
    check(sizes == std::vector<int>({9, 12, 12, 12, 12}), "frames keep coming, 9 then 12 a chunk");
    check(switched == std::vector<bool>({false, false, true, false, false}), "one chunk reports the switch");
    expect_error([&] { stream.set_prompt("", root + "/prompt.safetensors"); }, "this stream has ended", "a switch after close");
    expect_error([&] { engine.open_stream(live()).set_prompt("a red fox"); }, "no text encoder", "a text switch without an encoder");
    histream::Stream again = engine.open_stream(live());
    expect_error([&] { again.set_prompt("", root + "/absent.safetensors"); }, "absent.safetensors does not exist", "a bad switch");
    check(again.next().has_value() && again.next().has_value(), "the stream goes on after a refused switch");
}

// A live stream saved after chunk 1, then switched (re-cached) to the same prompt: resuming the saved state runs the
// very chunks the switched stream runs (exact on a CPU), and a state saved at a bounded stream's end extends it.
void state_resume() {
    histream::Runtime rt;
    std::string root;
    fixture_options(root);
    const std::string state = root + "/live.state.safetensors";
    auto engine = histream::Engine::tiny_demo(rt);
    std::vector<std::vector<uint8_t>> switched;
    {
        histream::Stream stream = engine.open_stream(live());
        for (int i = 0; i < 2; ++i) stream.next();
        stream.save_state(state);
        stream.set_prompt("", root + "/prompt.safetensors", true);
        for (int i = 0; i < 2; ++i) switched.push_back(bytes_of(*stream.next()));
    }
    histream::ResumeRequest same;
    same.prompt_embeds_path = root + "/prompt.safetensors";
    same.chunks = 2;
    histream::Stream resumed = engine.resume_stream(state, same);
    std::vector<int> indices;
    std::vector<std::vector<uint8_t>> got;
    while (auto c = resumed.next()) {
        indices.push_back(c->index);
        got.push_back(bytes_of(*c));
        if (c->index == 2) check(bool(c->prompt_switch) && c->prompt_switch->recache, "the first resumed chunk reports its re-cache");
    }
    check(indices == std::vector<int>({2, 3}), "the resumed chunks continue the saved stream's numbering");
    check(got == switched, "resuming equals the uninterrupted stream with a re-cache switch at that boundary");
    // a bounded stream's end state extends it by a chunk
    {
        histream::Stream bounded = engine.open_stream(small(21));
        while (bounded.next()) {
        }
        bounded.save_state(root + "/end.state.safetensors");
    }
    histream::ResumeRequest more;
    more.chunks = 1;
    histream::Stream extended = engine.resume_stream(root + "/end.state.safetensors", more);
    auto c = extended.next();
    check(c && c->index == 2 && c->num_frames == 12 && !extended.next(), "an ended stream's state extends it by one chunk");
    expect_error([&] { engine.resume_stream(root + "/end.state.safetensors"); }, "end of its video", "no chunks to run");
    expect_error([&] { engine.resume_stream(root + "/absent.safetensors"); }, "does not exist", "a missing state file");
    std::filesystem::remove(state);
    std::filesystem::remove(root + "/end.state.safetensors");
}

// set_prompt from a second thread while the first is in next(), then close() from there too.
void switch_from_thread() {
    histream::Runtime rt;
    std::string root;
    fixture_options(root);
    auto engine = histream::Engine::tiny_demo(rt);
    histream::Stream stream = engine.open_stream(live());
    std::mutex m;
    std::condition_variable arrived;
    std::vector<int> indices, switches;  // chunks as they arrive; those that report a switch
    std::thread reader([&] {
        while (auto c = stream.next()) {
            std::lock_guard<std::mutex> lock(m);
            indices.push_back(c->index);
            if (c->prompt_switch) switches.push_back(c->index);
            arrived.notify_all();
        }
    });
    auto wait_for = [&](auto done) {
        std::unique_lock<std::mutex> lock(m);
        return arrived.wait_for(lock, std::chrono::seconds(120), done);
    };
    check(wait_for([&] { return !indices.empty(); }), "a first chunk");
    stream.set_prompt("", root + "/prompt.safetensors", true);  // the reader is already in next() for chunk 1
    check(wait_for([&] { return !switches.empty() && indices.back() >= switches.front() + 2; }),
          "the switch lands and frames keep coming");
    stream.close();  // returns once the reader's chunk in progress is delivered; its next call gets none
    reader.join();
    check(switches.size() == 1 && (switches[0] == 1 || switches[0] == 2), "one switch, at the boundary after the call");
    for (size_t i = 0; i < indices.size(); ++i) check(indices[i] == static_cast<int>(i), "chunks in order");
    check(collect(engine, small(21)).indices.size() == 2, "the engine streams after a close from another thread");
}

// EngineOptions::tae_path reaches the Python half: the fixture's first chunk, decoded by its taew2_1.pth there.
void tae_decoder() {
    histream::Runtime rt;
    std::string root;
    histream::EngineOptions options = fixture_options(root);
    std::ifstream file(root + "/tae_chunk0.rgb", std::ios::binary);
    const std::vector<uint8_t> want((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    options.tae_path = root + "/taew2_1.pth";
    auto tae = histream::Engine::open(rt, options);
    auto r = small();
    r.prompt_embeds_path = root + "/prompt.safetensors";
    const Collected got = collect(tae, r);
    check(got.total_frames == 33 && got.frames[0].size() == 9u * 64 * 96 * 3, "TAEHV keeps the Wan VAE's frame counts");
    check(want.size() == got.frames[0].size() && got.frames[0] == want, "the first chunk is the Python half's TAEHV decode");
    options.tae_path.clear();
    auto wan = histream::Engine::open(rt, options);
    check(collect(wan, r).frames[0] != got.frames[0], "the folder's Wan VAE decodes differently");
    options.tae_path = root + "/absent.pth";
    expect_error([&] { histream::Engine::open(rt, options); }, "absent.pth do not exist", "missing TAEHV weights");
    options.tae_path = root + "/corrupt.pt";
    expect_error([&] { histream::Engine::open(rt, options); }, "corrupt", "corrupt TAEHV weights");
}

// DemoOptions: the embedded tiny TAEHV, or a taew2_1 file's, instead of the tiny Wan VAE.
void tiny_tae() {
    histream::Runtime rt;
    std::string root;
    fixture_options(root);
    auto wan = histream::Engine::tiny_demo(rt);
    histream::DemoOptions o;
    o.tiny_tae = true;
    auto embedded = histream::Engine::tiny_demo(rt, o);
    const Collected a = collect(wan, small()), b = collect(embedded, small());
    check(b.frames.size() == 3 && b.frames[0].size() == a.frames[0].size() && b.frames[1].size() == a.frames[1].size(),
          "the tiny TAEHV's chunks have the Wan VAE's sizes (9, 12, 12 frames)");
    check(a.frames[0] != b.frames[0], "the tiny TAEHV decodes differently");
    o.tiny_tae = false;
    o.tae_path = root + "/taew2_1.pth";
    auto file = histream::Engine::tiny_demo(rt, o);
    check(collect(file, small()).total_frames == 33, "the tiny DiT decoded by a taew2_1 file");
    o.tiny_tae = true;
    expect_error([&] { histream::Engine::tiny_demo(rt, o); }, "not both", "both TAEHV choices");
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
        {"failed_start", failed_start}, {"stream_handle", stream_handle}, {"live_switch", live_switch},
        {"switch_from_thread", switch_from_thread}, {"tae_decoder", tae_decoder}, {"tiny_tae", tiny_tae},
        {"state_resume", state_resume}};
    if (argc != 2 || !cases.count(argv[1])) {
        std::string names;
        for (const auto& entry : cases) names += (names.empty() ? "" : ", ") + entry.first;
        std::fprintf(stderr, "usage: host_tests CASE (%s)\n", names.c_str());
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
