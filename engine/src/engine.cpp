// histream::Engine and histream::VideoWriter over histream_engine.host.
#include <mutex>

#include "python_call.h"

namespace histream {

struct Engine::Impl {
    std::shared_ptr<Runtime::State> rt;
    py::object engine;  // histream_engine.host.HostEngine
    std::mutex streaming;  // one stream at a time; always taken before the GIL

    ~Impl() { release(engine); }
};

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

Engine Engine::open(Runtime& rt, const EngineOptions& o) {
    auto impl = std::make_unique<Impl>();
    impl->rt = rt.state_;
    impl->engine = with_python("Engine::open", [&] {
        return rt.state_->host.attr("open_engine")(o.model_dir, o.checkpoint, o.dtype, o.device, o.attention, o.cuda_graphs,
                                                   o.text_encoder);
    });
    return Engine(std::move(impl));
}

Engine Engine::tiny_demo(Runtime& rt, const std::string& device, const std::string& attention) {
    auto impl = std::make_unique<Impl>();
    impl->rt = rt.state_;
    impl->engine = with_python("Engine::tiny_demo", [&] { return rt.state_->host.attr("tiny_demo")(device, attention, 0); });
    return Engine(std::move(impl));
}

namespace {

// The chunk a host sees, pointing into `frames` (a [T, H, W, 3] uint8 C-contiguous array the caller keeps alive).
Chunk as_chunk(const py::tuple& item, const py::array& frames) {
    if (frames.dtype().kind() != 'u' || frames.itemsize() != 1 || frames.ndim() != 4 || frames.shape(3) != 3 ||
        !(frames.flags() & py::array::c_style))
        throw Error("histream: a chunk's frames are not a C-contiguous uint8 [T, H, W, 3] array");
    Chunk c;
    c.index = item[0].cast<int>();
    c.frames = static_cast<const uint8_t*>(frames.data());
    c.num_frames = static_cast<int>(frames.shape(0));
    c.height = static_cast<int>(frames.shape(1));
    c.width = static_cast<int>(frames.shape(2));
    c.denoise_seconds = item[2].cast<double>();
    c.vae_seconds = item[3].cast<double>();
    return c;
}

void close_quietly(py::object& generator) {
    if (!generator) return;
    try {
        generator.attr("close")();
    } catch (py::error_already_set&) {
        // the error that ended the stream is the one to report
    }
}

}  // namespace

int Engine::stream(const StreamRequest& r, const ChunkCallback& on_chunk) {
    if (!impl_) throw Error("histream::Engine::stream on a moved-from engine");
    auto lock = lock_outside_gil(impl_->streaming);
    return with_python("Engine::stream", [&] {
        py::object chunks = impl_->engine.attr("stream")(r.prompt, r.prompt_embeds_path, r.frames, r.height, r.width,
                                                         r.schedule, r.seed);
        int delivered = 0;
        try {
            while (true) {
                PyObject* next = PyIter_Next(chunks.ptr());  // the chunk's denoising and decoding run here
                if (next == nullptr) {
                    if (PyErr_Occurred()) throw py::error_already_set();
                    break;
                }
                py::tuple item = py::reinterpret_steal<py::object>(next);
                py::array frames = item[1];
                const Chunk chunk = as_chunk(item, frames);
                bool keep_going;
                {
                    py::gil_scoped_release unlocked;  // the host's code runs without the interpreter lock
                    keep_going = on_chunk(chunk);
                }
                ++delivered;
                if (!keep_going) break;
            }
        } catch (...) {
            close_quietly(chunks);
            throw;
        }
        close_quietly(chunks);  // frees the stream's caches now, after a cancel too
        return delivered;
    });
}

struct VideoWriter::Impl {
    std::shared_ptr<Runtime::State> rt;
    py::object writer;  // histream_engine.video.Mp4Writer
    int width, height;

    ~Impl() {
        if (!writer) return;
        py::gil_scoped_acquire gil;
        try {
            writer.attr("abort")();
        } catch (py::error_already_set&) {
            // nothing to report from a destructor
        }
        writer = py::object();
    }
};

VideoWriter::VideoWriter(Runtime& rt, const std::string& path, int width, int height) : impl_(std::make_unique<Impl>()) {
    impl_->rt = rt.state_;
    impl_->width = width;
    impl_->height = height;
    impl_->writer = with_python("VideoWriter", [&] { return rt.state_->host.attr("video_writer")(path, width, height); });
}

VideoWriter::VideoWriter(VideoWriter&&) noexcept = default;
VideoWriter::~VideoWriter() = default;

void VideoWriter::write(const Chunk& c) {
    if (!impl_ || !impl_->writer) throw Error("histream::VideoWriter::write after close");
    if (c.width != impl_->width || c.height != impl_->height)
        throw Error("histream::VideoWriter: a " + std::to_string(c.width) + "x" + std::to_string(c.height) +
                    " chunk into a " + std::to_string(impl_->width) + "x" + std::to_string(impl_->height) + " video");
    with_python("VideoWriter::write", [&] {
        // a view of the host's bytes (the base object keeps numpy from copying them)
        py::array frames(py::dtype::of<uint8_t>(), {c.num_frames, c.height, c.width, 3}, {}, c.frames, py::none());
        impl_->rt->host.attr("write_frames")(impl_->writer, frames);
    });
}

void VideoWriter::close() {
    if (!impl_ || !impl_->writer) return;
    with_python("VideoWriter::close", [&] {
        impl_->writer.attr("close")();
        impl_->writer = py::object();
    });
}

}  // namespace histream
