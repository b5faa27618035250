#include <histream/histream.hpp>

#include <cstdio>

int main(int argc, char** argv) {
    if (argc != 2) {                                        // the tiny model has no text encoder: switch to embeddings
        std::fprintf(stderr, "usage: host_live PROMPT.safetensors\n");
        return 2;
    }
    histream::Runtime rt;
    auto engine = histream::Engine::tiny_demo(rt);
    histream::StreamRequest req;
    req.live = true;                                        // live: chunks until close()
    req.height = 64;
    req.width = 96;
    int switches = 0;
    try {
        histream::Stream stream = engine.open_stream(req);  // the request is checked here
        while (auto c = stream.next()) {                    // the next chunk from the host's own loop, or none
            switches += bool(c->prompt_switch);             // the chunk after a switch reports it, and its cost
            std::printf("chunk %d: %d frames%s\n", c->index, c->num_frames, c->prompt_switch ? ", new prompt" : "");
            if (c->index == 1) stream.set_prompt("", argv[1], /*recache=*/true);  // any thread; next boundary
            if (c->index == 3) stream.close();              // frees the caches; next() returns none
        }
    } catch (const histream::Error& e) {                    // a bad switch throws and the stream goes on
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    return switches == 1 ? 0 : 1;
}
