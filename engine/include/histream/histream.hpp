// histream: the HiStream inference engine for C++ hosts.
//
// The engine itself is Python (histream_engine); this library embeds the interpreter (pybind11::embed) and keeps
// it out of your code: no Python header comes in through this one. Every call may come from any thread; the
// interpreter lock is taken inside and released while your callback runs. Errors are histream::Error.
//
//   histream::Runtime rt;                                  // once per process
//   auto engine = histream::Engine::tiny_demo(rt);         // or Engine::open(rt, options)
//   engine.stream(request, [](const histream::Chunk& c) { ...; return true; });
//   auto stream = engine.open_stream(request);             // or steered from the host's own loop:
//   while (auto c = stream.next()) { ...; stream.set_prompt("a red fox"); ... stream.close(); }
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
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

    // Refuses, as histream::Error (Python's OutputPathError, worded as the CLI's), a path where no file can be
    // written: a directory, under a file, an unwritable folder, a suffix other than `suffix` (when given), or,
    // without make_parents, a missing parent folder. For checking a host's outputs before any model work.
    void check_output_file(const std::string& path, const std::string& suffix = "", bool make_parents = true) const;

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
    std::string tae_path;  // taew2_1.pth / .safetensors: decode with TAEHV instead of the folder's Wan VAE
};

// The embedded tiny demo model (Engine::tiny_demo): random weights, nothing downloaded.
struct DemoOptions {
    std::string device = "cpu";
    std::string attention = "torch";
    bool tiny_tae = false;  // decode with an embedded tiny TAEHV (random weights) instead of the tiny Wan VAE
    std::string tae_path;  // or with a taew2_1 file's TAEHV (Wan 2.1 latents, as the tiny DiT's); not with tiny_tae
};

struct StreamRequest {
    std::string prompt;  // text (needs the engine's text encoder), or
    std::string prompt_embeds_path;  // precomputed UMT5 embeddings (.safetensors / .pt, [512, 4096]); the tiny demo takes neither
    int frames = 45;  // 4k+1, with (frames - 1) / 4 + 1 divisible by the chunk size (3); not read when live
    int height = 256;  // multiple of 16 (of 32 for schedules with low-res steps)
    int width = 256;
    std::string schedule = "histream";  // a preset name or a schedule JSON file
    int64_t seed = 0;
    bool live = false;  // an unbounded stream (Engine::open_stream): no frame count, it runs until closed
};

// A prompt switch (Stream::set_prompt) as the chunk after it reports it.
struct PromptSwitch {
    bool recache = false;  // the frames the chunk attends were re-encoded under the new prompt
    int forwards = 0;  // the re-cache's extra t=0 forwards, all resolutions
    double seconds = 0.0;  // the switch's wall time: the new text K/V, plus the re-cache
};

// One chunk of decoded video: valid during the callback that receives it, or, from Stream::next, until the next
// call to next() on that stream or the stream's destruction.
struct Chunk {
    int index = 0;  // chunks arrive in order: 0, 1, 2, ...
    const uint8_t* frames = nullptr;  // num_frames * height * width * 3 bytes, RGB, row-major
    int num_frames = 0;
    int height = 0;
    int width = 0;
    double denoise_seconds = 0.0;  // the chunk's denoising time
    double vae_seconds = 0.0;  // its decoding time (overlaps the next chunk's denoising on a GPU)
    std::optional<PromptSwitch> prompt_switch;  // set when a switch landed just before this chunk
};

// How a saved stream goes on (Engine::resume_stream).
struct ResumeRequest {
    std::string prompt;  // a new text prompt from the boundary on (the attended frames are re-encoded under it), or
    std::string prompt_embeds_path;  // a new embeddings file; both empty: the state's own prompt
    std::optional<int> chunks;  // chunks to run from the boundary; none: what the state's request had left (live: until closed)
};

// Return false to cancel: the stream stops cleanly after that chunk.
using ChunkCallback = std::function<bool(const Chunk&)>;

// A stream a host steers from its own loop (Engine::open_stream). It holds its engine's turn from open until it
// ends: its last chunk was delivered, it was closed, it failed, or it was destroyed (which closes it).
class HISTREAM_API Stream {
public:
    Stream(Stream&&) noexcept;
    Stream& operator=(Stream&&) noexcept;
    ~Stream();

    // Runs and returns the next chunk, or none once the stream has ended. One call at a time per stream (a second
    // thread waits). After an error the stream has ended; the engine stays usable.
    std::optional<Chunk> next();
    // Switches to a text prompt (needs the engine's text encoder) or an embeddings file at the next chunk boundary;
    // from any thread, also while another is inside next(). recache: re-encode the attended frames under the new
    // prompt (no visual cut); else only the text cross-attention changes. Checked here: a bad prompt throws and the
    // stream goes on. On a stream that has ended it throws.
    void set_prompt(const std::string& prompt, const std::string& prompt_embeds_path = "", bool recache = true);
    // Ends the stream and frees its caches; from any thread (a next() in progress first returns its chunk, then
    // the stream's next() calls return none). The last chunk's frames stay valid until next() or destruction.
    void close();
    // Saves what the stream needs to go on from the boundary after the last chunk next() returned, to `path`
    // (.safetensors): the attended frames' latents, the noise generator, the prompt, the decoder's history, and with
    // include_cache the rings too (GBs at 1080p; only while the stream runs). Also once it has ended, to extend it
    // (Engine::resume_stream). Waits for a next() in progress.
    void save_state(const std::string& path, bool include_cache = false);

    struct Impl;

private:
    friend class Engine;
    explicit Stream(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

class HISTREAM_API Engine {
public:
    // Loads a model (DiT, VAE, text encoder unless options.text_encoder is false).
    static Engine open(Runtime& rt, const EngineOptions& options);
    // The embedded tiny DiT and VAE with random weights (nothing downloaded, seconds on a CPU; the picture is noise).
    static Engine tiny_demo(Runtime& rt, const std::string& device = "cpu", const std::string& attention = "torch");
    static Engine tiny_demo(Runtime& rt, const DemoOptions& options);  // with a TAEHV decoder too

    Engine(Engine&&) noexcept;
    Engine& operator=(Engine&&) noexcept;
    ~Engine();

    // Generates the request chunk by chunk, calling on_chunk once per chunk, in order, on the calling thread.
    // Requests are checked before the first chunk runs. Returns the number of chunks delivered.
    // Streams on one engine (this form and open_stream's) run one at a time: a second thread waits for the first;
    // a thread that already runs one on this engine (an open Stream, a callback) gets an Error instead of waiting.
    int stream(const StreamRequest& request, const ChunkCallback& on_chunk);
    // Checks the request and opens a stream handle; no chunk runs until next(). request.live: a live stream,
    // until closed (sliding-window schedules; the default histream is one).
    Stream open_stream(const StreamRequest& request);
    // Opens a stream handle going on from a state file (Stream::save_state), as the uninterrupted stream would with
    // the new prompt switched in (re-cached) at that boundary; with the state's rings and its own prompt, bit for bit.
    // Chunk indices continue the saved stream's.
    Stream resume_stream(const std::string& state_path, const ResumeRequest& request = {});

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
