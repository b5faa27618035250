// histream-host-demo: the embedded tiny model streamed from C++, a per-chunk table, the frames written as an mp4
// (through the package's writer) or as raw RGB bytes (any other extension).
//
//   histream-host-demo [--frames 45] [--height 256] [--width 256] [--schedule histream] [--seed 0]
//                      [--device cpu] [--attention torch] [--out histream_host_demo.mp4]
#include <histream/histream.hpp>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>

namespace {

bool ends_with(const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

int usage(const char* bad) {
    std::cerr << "histream-host-demo: bad argument " << bad << "\nusage: histream-host-demo [--frames N] [--height H] "
              << "[--width W] [--schedule NAME] [--seed N] [--device DEV] [--attention NAME] [--out FILE.mp4|FILE.rgb]\n";
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    histream::StreamRequest req;
    std::string device = "cpu", attention = "torch", out = "histream_host_demo.mp4";
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) return usage(argv[i]);
        const std::string flag = argv[i], value = argv[i + 1];
        try {
            if (flag == "--frames") req.frames = std::stoi(value);
            else if (flag == "--height") req.height = std::stoi(value);
            else if (flag == "--width") req.width = std::stoi(value);
            else if (flag == "--seed") req.seed = std::stoll(value);
            else if (flag == "--schedule") req.schedule = value;
            else if (flag == "--device") device = value;
            else if (flag == "--attention") attention = value;
            else if (flag == "--out") out = value;
            else return usage(argv[i]);
        } catch (const std::exception&) {
            return usage(argv[i + 1]);
        }
    }
    try {
        histream::Runtime rt;
        auto engine = histream::Engine::tiny_demo(rt, device, attention);
        std::printf("histream-host-demo: histream_engine %s, tiny model (random weights), %d frames at %dx%d, schedule %s\n",
                    rt.version().c_str(), req.frames, req.width, req.height, req.schedule.c_str());
        const bool as_mp4 = ends_with(out, ".mp4");
        std::unique_ptr<histream::VideoWriter> mp4;
        std::ofstream raw;
        int frames = 0;
        double denoise = 0, vae = 0;
        engine.stream(req, [&](const histream::Chunk& c) {
            if (c.index == 0) {  // the request was checked before this first chunk: only now open the output
                if (as_mp4) mp4 = std::make_unique<histream::VideoWriter>(rt, out, c.width, c.height);
                else raw.open(out, std::ios::binary);
                std::printf("%5s  %6s  %9s  %9s  %9s\n", "chunk", "frames", "denoise s", "vae s", "ms/frame");
            }
            if (mp4) mp4->write(c);
            else raw.write(reinterpret_cast<const char*>(c.frames), static_cast<std::streamsize>(c.num_frames) * c.height * c.width * 3);
            frames += c.num_frames;
            denoise += c.denoise_seconds;
            vae += c.vae_seconds;
            std::printf("%5d  %6d  %9.3f  %9.3f  %9.1f\n", c.index, c.num_frames, c.denoise_seconds, c.vae_seconds,
                        1e3 * c.denoise_seconds / c.num_frames);
            std::fflush(stdout);
            return true;
        });
        if (mp4) mp4->close();
        std::printf("%d frames: denoise %.3f s (%.4f s/frame), VAE %.3f s\nwrote %s (%s)\n", frames, denoise,
                    denoise / frames, vae, out.c_str(), as_mp4 ? "H.264 mp4, 16 fps" : "raw RGB bytes, frame after frame");
        return 0;
    } catch (const histream::Error& e) {
        std::cerr << "histream-host-demo: error: " << e.what() << "\n";
        return 2;
    }
}
