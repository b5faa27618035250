#include <histream/histream.hpp>

#include <cstdio>

int main() {
    histream::Runtime rt;                                   // the embedded Python, once per process
    auto engine = histream::Engine::tiny_demo(rt);          // or histream::Engine::open(rt, options)
    histream::StreamRequest req;                            // prompt or prompt_embeds_path, frames, size, schedule, seed
    req.frames = 21;
    req.height = 64;
    req.width = 96;
    long bytes = 0;
    try {
        int chunks = engine.stream(req, [&](const histream::Chunk& c) {
            bytes += long(c.num_frames) * c.height * c.width * 3;  // c.frames: RGB bytes, valid during the call
            std::printf("chunk %d: %d frames, denoise %.3f s, VAE %.3f s\n", c.index, c.num_frames,
                        c.denoise_seconds, c.vae_seconds);
            return true;                                    // false cancels the stream after this chunk
        });
        std::printf("%d chunks, %ld bytes of frames\n", chunks, bytes);
    } catch (const histream::Error& e) {                    // Python's message: "ValueError: num_frames must be ..."
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return bytes == 21L * 64 * 96 * 3 ? 0 : 1;
}
