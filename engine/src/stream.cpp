// histream::Stream: a stream handle over host.py's HostStream, steered from the host's own loop.
//
// Locking: `stepping` serialises next() and close() on one stream and is always taken before the GIL; set_prompt
// takes neither (HostStream.set_prompt only queues the switch under its own lock), so a switch from another thread
// never waits for a chunk. The engine's turn is held from open_stream until the stream ends.
#include <atomic>

#include "engine_impl.h"

namespace histream {

struct Stream::Impl {
    std::shared_ptr<Runtime::State> rt;
    std::shared_ptr<Turns> turns;  // given back once the stream ends
    py::object stream;  // histream_engine.host.HostStream
    py::object frames;  // the last chunk's [T, H, W, 3] uint8 array, which the host's Chunk points into
    std::mutex stepping;
    std::atomic<bool> closing{false};  // close() was called: the next next() ends the stream
    std::atomic<bool> ended{false};  // closed in Python and the turn given back

    // Closes the Python stream (its caches go now) and gives the engine's turn back. `stepping` must be held.
    void end() {
        if (ended) return;
        ended = true;
        try {
            with_python("Stream::close", [&] { close_quietly(stream); });
        } catch (...) {
            turns->give_back();  // whatever happened in Python, the engine must not stay taken
            throw;
        }
        turns->give_back();
    }

    ~Impl() {
        release(stream);
        release(frames);
    }
};

Stream::Stream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Stream::Stream(Stream&&) noexcept = default;

Stream& Stream::operator=(Stream&& other) noexcept {
    if (this != &other) {
        try {
            close();
        } catch (...) {
            // a move-assignment cannot throw; the stream is released below either way
        }
        impl_ = std::move(other.impl_);
    }
    return *this;
}

Stream::~Stream() {
    try {
        close();
    } catch (...) {
        // nothing to report from a destructor
    }
}

Stream Engine::open_stream(const StreamRequest& r) {
    if (!impl_) throw Error("histream::Engine::open_stream on a moved-from engine");
    TurnHeld turn(*impl_->turns, "histream::Engine::open_stream");
    auto impl = std::make_unique<Stream::Impl>();
    impl->rt = impl_->rt;
    impl->turns = impl_->turns;
    impl->stream = with_python("Engine::open_stream", [&] {  // checks the request; no chunk runs yet
        return impl_->engine.attr("open")(host_request(impl_->rt->host, r));
    });
    turn.keep();
    return Stream(std::move(impl));
}

std::optional<Chunk> Stream::next() {
    if (!impl_) throw Error("histream::Stream::next on a moved-from stream");
    Impl& s = *impl_;
    auto lock = lock_outside_gil(s.stepping);
    with_python("Stream::next", [&] { s.frames = py::object(); });  // the previous chunk's frames go now
    if (s.ended) return std::nullopt;
    if (s.closing) {
        s.end();
        return std::nullopt;
    }
    try {
        std::optional<Chunk> chunk = with_python("Stream::next", [&]() -> std::optional<Chunk> {
            py::object item = s.stream.attr("next_chunk")();  // the chunk's denoising and decoding run here
            if (item.is_none()) return std::nullopt;
            py::tuple t = item;
            py::array frames = t[1];
            Chunk c = as_chunk(t, frames);
            s.frames = frames;
            return c;
        });
        if (!chunk) s.end();  // the last chunk of a bounded stream was delivered
        return chunk;
    } catch (...) {
        s.end();  // a failed chunk ends the stream; the engine goes on
        throw;
    }
}

void Stream::set_prompt(const std::string& prompt, const std::string& prompt_embeds_path, bool recache) {
    if (!impl_) throw Error("histream::Stream::set_prompt on a moved-from stream");
    if (impl_->ended || impl_->closing)
        throw Error("histream::Stream::set_prompt: this stream has ended (closed, failed, or its last chunk delivered); "
                    "open a new one with Engine::open_stream");
    with_python("Stream::set_prompt", [&] { impl_->stream.attr("set_prompt")(prompt, prompt_embeds_path, recache); });
}

void Stream::save_state(const std::string& path, bool include_cache) {
    if (!impl_) throw Error("histream::Stream::save_state on a moved-from stream");
    auto lock = lock_outside_gil(impl_->stepping);  // between chunks: a next() in progress ends first
    with_python("Stream::save_state", [&] { impl_->stream.attr("save_state")(path, include_cache); });
}

Stream Engine::resume_stream(const std::string& state_path, const ResumeRequest& r) {
    if (!impl_) throw Error("histream::Engine::resume_stream on a moved-from engine");
    TurnHeld turn(*impl_->turns, "histream::Engine::resume_stream");
    auto impl = std::make_unique<Stream::Impl>();
    impl->rt = impl_->rt;
    impl->turns = impl_->turns;
    impl->stream = with_python("Engine::resume_stream", [&] {  // checks the state and the prompt; no chunk runs yet
        py::object chunks = r.chunks ? py::object(py::int_(*r.chunks)) : py::none();
        return impl_->engine.attr("resume")(state_path, r.prompt, r.prompt_embeds_path, chunks);
    });
    turn.keep();
    return Stream(std::move(impl));
}

void Stream::close() {
    if (!impl_) return;
    impl_->closing = true;  // a next() waiting behind the one in progress returns none
    auto lock = lock_outside_gil(impl_->stepping);  // a next() in progress returns its chunk first
    impl_->end();
}

}  // namespace histream
