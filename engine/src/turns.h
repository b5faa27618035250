// Internal: one stream at a time per engine. Not a std::mutex: a Stream handle holds its engine's turn from open to
// close, and may be closed on another thread than the one that opened it (a std::mutex must be unlocked by its owner).
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>

#include "python_call.h"

namespace histream {

class Turns {
public:
    // Waits, without the GIL, until no stream runs on the engine, then holds the turn for the calling thread. A
    // thread that already holds it would wait for itself forever: it gets an Error instead.
    void take(const char* what) {
        if (Py_IsInitialized() && PyGILState_Check()) {
            py::gil_scoped_release unlocked;  // the turn's holder may need the GIL to finish its chunk
            wait_for_turn(what);
        } else {
            wait_for_turn(what);
        }
    }

    void give_back() {
        {
            auto lock = lock_outside_gil(m_);
            busy_ = false;
            holder_ = std::thread::id();
        }
        free_.notify_one();
    }

private:
    void wait_for_turn(const char* what) {
        std::unique_lock<std::mutex> lock(m_);
        if (busy_ && holder_ == std::this_thread::get_id())
            throw Error(std::string(what) + ": this thread already runs a stream on this engine (an open histream::Stream, "
                        "or a stream() callback): close it first, or use a second Engine");
        free_.wait(lock, [&] { return !busy_; });
        busy_ = true;
        holder_ = std::this_thread::get_id();
    }

    std::mutex m_;  // held only for the flag's reads and writes, never across Python
    std::condition_variable free_;
    bool busy_ = false;
    std::thread::id holder_;  // the thread that took the turn (opened the stream)
};

// Holds a turn until released or destroyed (for the callback form and for opening a handle).
class TurnHeld {
public:
    TurnHeld(Turns& turns, const char* what) : turns_(&turns) { turns.take(what); }
    ~TurnHeld() {
        if (turns_) turns_->give_back();
    }
    TurnHeld(const TurnHeld&) = delete;
    TurnHeld& operator=(const TurnHeld&) = delete;
    void keep() { turns_ = nullptr; }  // the turn passes to a Stream, which gives it back when it ends

private:
    Turns* turns_;
};

}  // namespace histream
