// histream::Engine over histream_engine.host: opening one, and its callback form of a stream.
#include "engine_impl.h"

namespace histream {

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::Engine(Engine&&) noexcept = default;
Engine& Engine::operator=(Engine&&) noexcept = default;
Engine::~Engine() = default;

Engine Engine::open(Runtime& rt, const EngineOptions& o) {
    auto impl = std::make_unique<Impl>();
    impl->rt = rt.state_;
    impl->engine = with_python("Engine::open", [&] {
        using namespace pybind11::literals;
        py::object host = rt.state_->host;
        return host.attr("open_engine")(host.attr("EngineOptions")(
            "model_dir"_a = o.model_dir, "checkpoint"_a = o.checkpoint, "dtype"_a = o.dtype, "device"_a = o.device,
            "attention"_a = o.attention, "cuda_graphs"_a = o.cuda_graphs, "text_encoder"_a = o.text_encoder,
            "tae_path"_a = o.tae_path));
    });
    return Engine(std::move(impl));
}

Engine Engine::tiny_demo(Runtime& rt, const std::string& device, const std::string& attention) {
    DemoOptions o;
    o.device = device;
    o.attention = attention;
    return tiny_demo(rt, o);
}

Engine Engine::tiny_demo(Runtime& rt, const DemoOptions& o) {
    auto impl = std::make_unique<Impl>();
    impl->rt = rt.state_;
    impl->engine = with_python("Engine::tiny_demo", [&] {
        return rt.state_->host.attr("tiny_demo")(o.device, o.attention, 0, o.tiny_tae ? "tae" : "wan", o.tae_path);
    });
    return Engine(std::move(impl));
}

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
    if (item.size() > 4 && !item[4].is_none()) {
        const py::tuple s = item[4];  // (recache, extra forwards, seconds)
        c.prompt_switch = PromptSwitch{s[0].cast<bool>(), s[1].cast<int>(), s[2].cast<double>()};
    }
    return c;
}

py::object host_request(const py::object& host, const StreamRequest& r) {
    using namespace pybind11::literals;
    py::object frames = r.live ? py::none() : py::object(py::int_(r.frames));
    return host.attr("HostRequest")("prompt"_a = r.prompt, "prompt_embeds_path"_a = r.prompt_embeds_path, "frames"_a = frames,
                                    "height"_a = r.height, "width"_a = r.width, "schedule"_a = r.schedule, "seed"_a = r.seed,
                                    "live"_a = r.live);
}

void close_quietly(py::object& stream) {
    if (!stream) return;
    try {
        stream.attr("close")();
    } catch (py::error_already_set&) {
        // the error that ended the stream is the one to report
    }
}

int Engine::stream(const StreamRequest& r, const ChunkCallback& on_chunk) {
    if (!impl_) throw Error("histream::Engine::stream on a moved-from engine");
    TurnHeld turn(*impl_->turns, "histream::Engine::stream");
    return with_python("Engine::stream", [&] {
        py::object chunks = impl_->engine.attr("stream")(host_request(impl_->rt->host, r));
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

}  // namespace histream
