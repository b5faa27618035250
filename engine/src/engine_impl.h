// Internal: what Engine and Stream share (engine.cpp, stream.cpp).
#pragma once

#include <memory>

#include "python_call.h"
#include "turns.h"

namespace histream {

struct Engine::Impl {
    std::shared_ptr<Runtime::State> rt;
    py::object engine;  // histream_engine.host.HostEngine
    std::shared_ptr<Turns> turns = std::make_shared<Turns>();  // shared with open Streams, which may outlive the Engine

    ~Impl() { release(engine); }
};

// The chunk a host sees from host.py's (index, frames, denoise s, VAE s[, switch]), pointing into `frames` (a
// [T, H, W, 3] uint8 C-contiguous array the caller keeps alive). The GIL must be held.
Chunk as_chunk(const py::tuple& item, const py::array& frames);

// The request as histream_engine.host.HostRequest: a live one has no frame count (None). The GIL must be held.
py::object host_request(const py::object& host, const StreamRequest& r);

// Closes a Python generator or stream, keeping quiet about errors (the one that ended the stream is the one to
// report). The GIL must be held.
void close_quietly(py::object& stream);

}  // namespace histream
