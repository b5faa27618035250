// histream: the HiStream inference engine for C++ hosts.
//
// The engine itself is Python (histream_engine); this library embeds the interpreter (pybind11::embed) and keeps
// it out of your code: no Python header comes in through this one. Every call may come from any thread; the
// interpreter lock is taken inside and released while your callback runs. Errors are histream::Error.
//
//   histream::Runtime rt;                                  // once per process
//   auto engine = histream::Engine::tiny_demo(rt);         // or Engine::open(rt, options)
//   engine.stream(request, [](const histream::Chunk& c) { ...; return true; });
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#if defined(_WIN32)
#define HISTREAM_API
#else
#define HISTREAM_API __attribute__((visibility("default")))
#endif

namespace histream {

// Every failure: a Python exception's type and message ("ValueError: num_frames must be 4k+1 ..."), or the
// runtime's own. The engine that raised it stays usable.
class HISTREAM_API Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// The embedded Python interpreter. The first Runtime of a process starts it (or joins one the host already
// runs) and finds histream_engine in the active virtual environment ($VIRTUAL_ENV), in $HISTREAM_PYTHONPATH
// (':'-separated, searched first), or in the environment this library was built against. Further Runtimes share
// it. The last one destroyed, on the thread that started it, shuts it down; engines keep it alive until they go.
class HISTREAM_API Runtime {
public:
    Runtime();
    ~Runtime();
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;

    // The version of histream_engine that was imported.
    std::string version() const;

    struct State;

private:
    std::shared_ptr<State> state_;
    friend class Engine;
    friend class VideoWriter;
};

struct EngineOptions {
    std::string model_dir;  // a Wan2.1 folder or a diffusers layout (see docs/cli.md, histream generate)
    std::string checkpoint;  // optional causal DiT weights replacing the folder's (Self-Forcing / HiStream .pt)
    std::string dtype = "bfloat16";  // bfloat16, float16 or float32
    std::string device;  // "cuda", "cuda:1", "cpu"; empty: cuda if available, else cpu
    std::string attention = "torch";  // an attention backend (torch, triton, cuda, cudnn, flash_attn, auto)
    bool cuda_graphs = false;  // replay steady-state chunks as CUDA graphs (CUDA only)
    bool text_encoder = true;  // load UMT5 for text prompts (11 GB in bf16); off: prompt_embeds_path only
};

struct StreamRequest {
    std::string prompt;  // text (needs the engine's text encoder), or
    std::string prompt_embeds_path;  // precomputed UMT5 embeddings (.safetensors / .pt, [512, 4096]); the tiny demo takes neither
    int frames = 45;  // 4k+1, with (frames - 1) / 4 + 1 divisible by the chunk size (3)
    int height = 256;  // multiple of 16 (of 32 for schedules with low-res steps)
    int width = 256;
    std::string schedule = "histream";  // a preset name or a schedule JSON file
    int64_t seed = 0;
};

// One chunk of decoded video, valid only during the callback that receives it.
struct Chunk {
    int index = 0;  // chunks arrive in order: 0, 1, 2, ...
    const uint8_t* frames = nullptr;  // num_frames * height * width * 3 bytes, RGB, row-major
    int num_frames = 0;
    int height = 0;
    int width = 0;
    double denoise_seconds = 0.0;  // the chunk's denoising time
    double vae_seconds = 0.0;  // its decoding time (overlaps the next chunk's denoising on a GPU)
};

// Return false to cancel: the stream stops cleanly after that chunk.
using ChunkCallback = std::function<bool(const Chunk&)>;

class HISTREAM_API Engine {
public:
    // Loads a model (DiT, VAE, text encoder unless options.text_encoder is false).
    static Engine open(Runtime& rt, const EngineOptions& options);
    // The embedded tiny DiT and VAE with random weights (nothing downloaded, seconds on a CPU; the picture is noise).
    static Engine tiny_demo(Runtime& rt, const std::string& device = "cpu", const std::string& attention = "torch");

    Engine(Engine&&) noexcept;
    Engine& operator=(Engine&&) noexcept;
    ~Engine();

    // Generates the request chunk by chunk, calling on_chunk once per chunk, in order, on the calling thread.
    // Requests are checked before the first chunk runs. Streams on one engine run one at a time: a second
    // thread waits for the first. Returns the number of chunks delivered.
    int stream(const StreamRequest& request, const ChunkCallback& on_chunk);

    struct Impl;

private:
    explicit Engine(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

// H.264 mp4 at 16 fps through the package's writer; the file appears under its name only once closed.
class HISTREAM_API VideoWriter {
public:
    VideoWriter(Runtime& rt, const std::string& path, int width, int height);
    VideoWriter(VideoWriter&&) noexcept;
    ~VideoWriter();  // without close(): the partial file is removed
    void write(const Chunk& chunk);
    void close();

    struct Impl;

private:
    std::unique_ptr<Impl> impl_;
};

}  // namespace histream
