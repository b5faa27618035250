// histream::VideoWriter over the package's mp4 writer.
#include "python_call.h"

namespace histream {

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
