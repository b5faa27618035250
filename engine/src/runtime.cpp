// Starting, sharing and stopping the embedded interpreter, and finding histream_engine in it.
#include <atomic>
#include <cstdlib>
#include <mutex>

#include "python_call.h"

namespace histream {
namespace {

std::mutex g_mutex;
std::weak_ptr<Runtime::State> g_state;
std::atomic<bool> g_finalized{false};  // set by ~State, which the last Engine may run outside g_mutex

// Where histream_engine is looked for, in order: $HISTREAM_PYTHONPATH, the active venv's site-packages (with its
// .pth files, so editable installs resolve), the site-packages of the Python this library was built against.
const char* kFindPackage = R"PY(
import os, site, sys, sysconfig
def _histream_paths(build_site):
    for entry in reversed([p for p in os.environ.get("HISTREAM_PYTHONPATH", "").split(os.pathsep) if p]):
        sys.path.insert(0, entry)
    venv = os.environ.get("VIRTUAL_ENV")
    for prefix in ([venv] if venv else []):
        site.addsitedir(sysconfig.get_path("purelib", vars={"base": prefix, "platbase": prefix}))
    if build_site and os.path.isdir(build_site):
        site.addsitedir(build_site)
)PY";

// Starts Python as if run from the active venv's interpreter, else from the one this library was built against:
// Python finds its standard library and site-packages from that path, not from whatever `python3` is on PATH.
void start_interpreter() {
    const char* venv = std::getenv("VIRTUAL_ENV");
    const std::string program = venv && *venv ? std::string(venv) + "/bin/python" : std::string(HISTREAM_BUILD_PYTHON);
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.parse_argv = 0;
    config.install_signal_handlers = 0;  // the host owns its signal handlers
    PyStatus status = PyConfig_SetBytesString(&config, &config.program_name, program.c_str());
    if (PyStatus_Exception(status)) {
        PyConfig_Clear(&config);
        throw Error("histream: cannot configure the embedded Python for " + program);
    }
    try {
        py::initialize_interpreter(&config, 0, nullptr, false);
    } catch (const std::exception& e) {
        throw Error(std::string("histream: the embedded Python (") + program + ") did not start: " + e.what());
    }
}

}  // namespace

std::string describe(const py::error_already_set& e) {
    std::string type = "Error";
    if (e.type()) type = py::str(e.type().attr("__name__"));
    return type + ": " + std::string(py::str(e.value()));
}

Runtime::State::State() : started_on(std::this_thread::get_id()) {
    if (!Py_IsInitialized()) {
        start_interpreter();
        owns_interpreter = true;
    }
    try {
        find_package();
    } catch (...) {
        release(host);  // members are destroyed on the way out, and Python objects need the lock for that
        // Python cannot be started twice, so it stays up; but this thread must not keep its lock, or every other
        // thread's next call would wait for it forever.
        if (owns_interpreter) PyEval_SaveThread();
        throw;
    }
    if (owns_interpreter) main_thread_state = PyEval_SaveThread();
}

void Runtime::State::find_package() {
    {
        py::gil_scoped_acquire gil;
        try {
            py::dict scope;
            py::exec(kFindPackage, scope);
            scope["_histream_paths"](HISTREAM_BUILD_SITE);
            try {
                host = py::module_::import("histream_engine.host");
            } catch (py::error_already_set& e) {
                std::string path = py::str(py::module_::import("sys").attr("path"));
                throw Error("histream_engine cannot be imported by the embedded Python (" + describe(e) + "); activate the "
                            "virtual environment it is installed in, or set HISTREAM_PYTHONPATH. sys.path: " + path);
            }
            version = py::str(py::module_::import("histream_engine").attr("__version__"));
        } catch (py::error_already_set& e) {
            throw Error(describe(e));
        }
    }
}

Runtime::State::~State() {
    release(host);
    // Python may only be shut down by the thread that started it; elsewhere the process exit ends it.
    if (owns_interpreter && std::this_thread::get_id() == started_on) {
        PyEval_RestoreThread(main_thread_state);
        py::finalize_interpreter();
        g_finalized = true;
    }
}

Runtime::Runtime() {
    auto lock = lock_outside_gil(g_mutex);
    state_ = g_state.lock();
    if (state_) return;
    if (g_finalized)
        throw Error("the embedded Python was shut down when the last histream::Runtime was destroyed, and it cannot be "
                    "started twice in one process: keep one Runtime alive for as long as the process uses histream");
    state_ = std::make_shared<State>();
    g_state = state_;
}

Runtime::~Runtime() {
    auto lock = lock_outside_gil(g_mutex);
    state_.reset();
}

std::string Runtime::version() const { return state_->version; }

void Runtime::check_output_file(const std::string& path, const std::string& suffix, bool make_parents) const {
    with_python("Runtime::check_output_file", [&] { state_->host.attr("check_output")(path, suffix, make_parents); });
}

}  // namespace histream
