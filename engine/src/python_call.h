// Internal: the embedded interpreter's shared state and the one way this library calls into Python.
#pragma once

#include <pybind11/embed.h>
#include <pybind11/numpy.h>

#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "histream/histream.hpp"

namespace histream {

namespace py = pybind11;

struct Runtime::State {
    bool owns_interpreter = false;  // this library started it (else it joined the host's)
    std::thread::id started_on;
    PyThreadState* main_thread_state = nullptr;  // released after start, so that any thread can take the lock
    py::object host;  // histream_engine.host
    std::string version;

    State();
    ~State();

private:
    void find_package();  // sys.path, then import histream_engine.host
};

// "TypeName: message" of the Python exception being handled (the GIL must be held).
std::string describe(const py::error_already_set& e);

// Runs f with the GIL held; Python exceptions become histream::Error.
template <typename F>
auto with_python(const char* what, F&& f) -> decltype(f()) {
    py::gil_scoped_acquire gil;
    try {
        return f();
    } catch (py::error_already_set& e) {
        throw Error(describe(e));
    } catch (py::cast_error& e) {
        throw Error(std::string(what) + ": unexpected value from Python: " + e.what());
    }
}

// Locks `m` without deadlocking against the GIL: a thread that holds the GIL (a host already running Python) lets
// go of it while it waits, since the mutex's holder may need the GIL to finish. Always lock before taking the GIL.
inline std::unique_lock<std::mutex> lock_outside_gil(std::mutex& m) {
    std::unique_lock<std::mutex> lock(m, std::defer_lock);
    if (Py_IsInitialized() && PyGILState_Check()) {
        py::gil_scoped_release unlocked;
        lock.lock();
    } else {
        lock.lock();
    }
    return lock;
}

// Drops a Python reference with the GIL held (for destructors).
inline void release(py::object& obj) {
    if (!obj) return;
    py::gil_scoped_acquire gil;
    obj = py::object();
}

}  // namespace histream
