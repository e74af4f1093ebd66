/*
 * ember.uffd._faultloop: the page server's fast path in C, run without the GIL.
 *
 * A Python fault costs about 40 us of interpreter time on top of four syscalls; this loop
 * does the same work as PageServer._serve_fault for the common case and hands every other
 * message back to Python, so the Python code stays the only implementation of the slow
 * cases (REMOVE events, write-protect and minor faults, read errors, unexpected errnos).
 * server.py's docstring describes the split and what this loop writes without the
 * tracker's lock.
 *
 * Shared with Python (buffers held for the object's life):
 *   regions   uint64 [n][3]  base, end, memfile offset; sorted by base
 *   segments  int64  [m][4]  device offset, length, file offset, fd (-1: zeros); sorted, gap free
 *   states    uint8  [pages] PageTracker's state array
 *   copy      page-aligned buffer the installs copy from (its size bounds read-ahead)
 *   zeros     page-aligned page of zeros: the source of zero installs that ZEROPAGE cannot do
 *   shared    int64  [SLOTS] counts, peer-gone flag and the read-ahead window
 * and owned here: the access log, a ring of page * 2 + write entries that drain() empties.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

enum { NOT_PRESENT = 0, DIRTY = 1, ZERO = 2, REMOVED = 3, CLEAN = 4 };

enum {
    FAULTS,
    INSTALLS,
    BYTES_INSTALLED,
    ZERO_INSTALLS,
    DEFERRED,
    PEER_GONE,
    SEQUENTIAL_NEXT,
    WINDOW_PAGES,
    SLOTS
};

#define BATCH 128
#define SMALL_PAGE 4096

typedef struct {
    uint64_t base, end, offset;
} Region;

typedef struct {
    int64_t offset, length, file_offset, fd;
} Segment;

typedef struct {
    PyObject_HEAD
    int uffd;
    int wake_fd;
    int write_protect;
    int running;
    int stopping; /* set by stop() while the loop may run without the GIL */
    uint64_t page_size;
    uint64_t spin_ns;
    Py_buffer regions, segments, states, copy, zeros, shared;
    uint64_t *log;
    uint64_t log_capacity;
    uint64_t log_head; /* advanced by the loop (release), read by drain (acquire) */
    uint64_t log_tail; /* advanced by drain (release), read by the loop (acquire) */
} FaultLoop;

/* What the loop did with a batch: every message served, or where to stop and hand back. */
typedef struct {
    struct uffd_msg messages[BATCH];
    struct uffd_msg retry[BATCH];
    size_t first_unhandled, unhandled, retries;
} Batch;

typedef enum { SERVED, RETRY_LATER, HAND_BACK } Outcome;

static inline uint8_t state_at(FaultLoop *self, uint64_t page) {
    return __atomic_load_n((uint8_t *)self->states.buf + page, __ATOMIC_RELAXED);
}

static inline void set_state(FaultLoop *self, uint64_t page, uint8_t state) {
    __atomic_store_n((uint8_t *)self->states.buf + page, state, __ATOMIC_RELAXED);
}

/* Only the serving thread writes the slots (this loop, or Python between runs); atomics keep
 * readers in other threads (PageServer.stats) from seeing torn values. */
static inline void add(FaultLoop *self, int slot, int64_t delta) {
    int64_t *shared = self->shared.buf;
    __atomic_store_n(&shared[slot], __atomic_load_n(&shared[slot], __ATOMIC_RELAXED) + delta, __ATOMIC_RELAXED);
}

static inline int64_t get_slot(FaultLoop *self, int slot) {
    return __atomic_load_n((int64_t *)self->shared.buf + slot, __ATOMIC_RELAXED);
}

static inline void set_slot(FaultLoop *self, int slot, int64_t value) {
    __atomic_store_n((int64_t *)self->shared.buf + slot, value, __ATOMIC_RELAXED);
}

static const Region *region_of(FaultLoop *self, uint64_t address) {
    const Region *regions = self->regions.buf;
    size_t low = 0, high = (size_t)self->regions.len / sizeof(Region);
    while (low < high) { /* first region whose base is above the address */
        size_t middle = low + (high - low) / 2;
        if (regions[middle].base <= address)
            low = middle + 1;
        else
            high = middle;
    }
    if (low == 0 || address >= regions[low - 1].end)
        return NULL;
    return &regions[low - 1];
}

/* ioctl result as an errno: 0 on success. */
static int uffd_ioctl(FaultLoop *self, unsigned long request, void *argument) {
    return ioctl(self->uffd, request, argument) == 0 ? 0 : errno;
}

static int wake(FaultLoop *self, uint64_t address) {
    struct uffdio_range range = {.start = address, .len = self->page_size};
    int error = uffd_ioctl(self, UFFDIO_WAKE, &range);
    return error == ESRCH ? 0 : error;
}

static int install(FaultLoop *self, uint64_t address, uint64_t length, int zero, int write) {
    int protect = self->write_protect && !write;
    if (zero && length == SMALL_PAGE && !protect) {
        struct uffdio_zeropage request = {.range = {.start = address, .len = length}};
        return uffd_ioctl(self, UFFDIO_ZEROPAGE, &request);
    }
    struct uffdio_copy request = {
        .dst = address,
        .src = (uint64_t)(uintptr_t)(zero ? self->zeros.buf : self->copy.buf),
        .len = length,
        .mode = protect ? UFFDIO_COPY_MODE_WP : 0,
    };
    return uffd_ioctl(self, UFFDIO_COPY, &request);
}

/* ``length`` bytes of ``fd`` from ``file_offset`` into ``target`` (zeros for fd -1); 0 on a
 * failed or short read. */
static int fill(int fd, uint64_t file_offset, char *target, uint64_t length) {
    if (fd < 0) {
        memset(target, 0, length);
        return 1;
    }
    for (uint64_t done = 0; done < length;) {
        ssize_t got = pread(fd, target + done, length - done, (off_t)(file_offset + done));
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        done += (uint64_t)got;
    }
    return 1;
}

/* Fill the copy buffer with device bytes [offset, offset + length); 0 when no segment covers
 * a byte or a read fails or comes up short (Python then retries and reports it). Rows that
 * are contiguous in one file are read with one pread, as BuildFile plans its reads. */
static int read_source(FaultLoop *self, uint64_t offset, uint64_t length) {
    const Segment *segments = self->segments.buf;
    size_t count = (size_t)self->segments.len / sizeof(Segment);
    size_t low = 0, high = count;
    while (low < high) { /* first segment that starts above the offset */
        size_t middle = low + (high - low) / 2;
        if ((uint64_t)segments[middle].offset <= offset)
            low = middle + 1;
        else
            high = middle;
    }
    if (low == 0)
        return 0;
    char *target = self->copy.buf, *run_target = target;
    int run_fd = -1;
    uint64_t run_file_offset = 0, run_length = 0;
    for (size_t index = low - 1; length > 0; index++) {
        if (index >= count)
            return 0;
        const Segment *segment = &segments[index];
        uint64_t start = (uint64_t)segment->offset, end = start + (uint64_t)segment->length;
        if (offset < start || offset >= end)
            return 0;
        uint64_t take = end - offset < length ? end - offset : length;
        uint64_t file_offset = (uint64_t)segment->file_offset + (offset - start);
        if (run_length > 0 && (segment->fd != run_fd || run_file_offset + run_length != file_offset)) {
            if (!fill(run_fd, run_file_offset, run_target, run_length))
                return 0;
            run_length = 0;
        }
        if (run_length == 0) {
            run_fd = (int)segment->fd;
            run_file_offset = file_offset;
            run_target = target;
        }
        run_length += take;
        target += take;
        offset += take;
        length -= take;
    }
    return fill(run_fd, run_file_offset, run_target, run_length);
}

/* PageServer._copy_pages: grow the copy unit while faults run sequentially. */
static uint64_t copy_pages(FaultLoop *self, const Region *region, uint64_t page, int write) {
    uint64_t capacity = (uint64_t)self->copy.len / self->page_size;
    int64_t window = get_slot(self, WINDOW_PAGES);
    if ((int64_t)page == get_slot(self, SEQUENTIAL_NEXT) && !(write && self->write_protect))
        window = window * 2 > (int64_t)capacity ? (int64_t)capacity : window * 2;
    else
        window = 1;
    set_slot(self, WINDOW_PAGES, window);
    uint64_t limit = (uint64_t)window;
    uint64_t region_end = (region->offset + (region->end - region->base)) / self->page_size;
    if (region_end > (uint64_t)self->states.len)
        region_end = (uint64_t)self->states.len;
    if (region_end - page < limit)
        limit = region_end - page;
    uint64_t pages = 1;
    while (pages < limit && state_at(self, page + pages) == NOT_PRESENT)
        pages++;
    set_slot(self, SEQUENTIAL_NEXT, (int64_t)(page + pages));
    return pages;
}

static int log_full(FaultLoop *self) {
    uint64_t tail = __atomic_load_n(&self->log_tail, __ATOMIC_ACQUIRE);
    return self->log_head - tail >= self->log_capacity;
}

static void log_append(FaultLoop *self, uint64_t entry) {
    self->log[self->log_head % self->log_capacity] = entry;
    __atomic_store_n(&self->log_head, self->log_head + 1, __ATOMIC_RELEASE);
}

/* Pages [first, end) back to NOT_PRESENT: read-ahead pages an install did not map. */
static void forget(FaultLoop *self, uint64_t first, uint64_t end) {
    for (uint64_t page = first; page < end; page++)
        set_state(self, page, NOT_PRESENT);
}

/* PageServer._serve_fault for one page-fault message, or HAND_BACK with nothing changed but
 * perhaps an access logged, which Python logs again when it serves the fault. */
static Outcome serve_fault(FaultLoop *self, const struct uffd_msg *message) {
    uint64_t flags = message->arg.pagefault.flags;
    uint64_t address = message->arg.pagefault.address;
    if (flags & (UFFD_PAGEFAULT_FLAG_WP | UFFD_PAGEFAULT_FLAG_MINOR))
        return HAND_BACK;
    const Region *region = region_of(self, address);
    if (region == NULL || log_full(self))
        return HAND_BACK;
    uint64_t page_size = self->page_size;
    uint64_t page_address = address & ~(page_size - 1);
    uint64_t page = (region->offset + page_address - region->base) / page_size;
    if (page >= (uint64_t)self->states.len)
        return HAND_BACK;
    int write = (flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0;
    uint8_t state = state_at(self, page);
    if (state == DIRTY || state == CLEAN) {
        if (wake(self, page_address) != 0)
            return HAND_BACK;
        add(self, FAULTS, 1);
        return SERVED;
    }
    int64_t saved_next = get_slot(self, SEQUENTIAL_NEXT), saved_window = get_slot(self, WINDOW_PAGES);
    uint64_t pages = 1;
    int zero = 1;
    if (state == NOT_PRESENT) {
        pages = copy_pages(self, region, page, write);
        if (!read_source(self, page * page_size, pages * page_size)) {
            set_slot(self, SEQUENTIAL_NEXT, saved_next);
            set_slot(self, WINDOW_PAGES, saved_window);
            return HAND_BACK;
        }
        zero = pages == 1 && page_size == SMALL_PAGE && memcmp(self->copy.buf, self->zeros.buf, SMALL_PAGE) == 0;
    } else if (state != ZERO && state != REMOVED) {
        return HAND_BACK;
    }
    /* Tracker, log and counts first: once the install wakes the guest they must show it. */
    uint64_t length = pages * page_size;
    add(self, FAULTS, 1);
    add(self, INSTALLS, 1);
    add(self, BYTES_INSTALLED, (int64_t)length);
    add(self, ZERO_INSTALLS, zero);
    if (write)
        set_state(self, page, DIRTY);
    for (uint64_t each = page + (uint64_t)write; each < page + pages; each++) {
        uint8_t old = state_at(self, each);
        if (old == NOT_PRESENT || old == REMOVED)
            set_state(self, each, zero ? ZERO : CLEAN);
    }
    log_append(self, page * 2 + (uint64_t)write);
    int error = install(self, page_address, length, zero, write);
    if (error == 0)
        return SERVED;
    add(self, INSTALLS, -1);
    add(self, BYTES_INSTALLED, -(int64_t)length);
    add(self, ZERO_INSTALLS, -zero);
    if (error == EEXIST) {
        forget(self, page + 1, page + pages);
        if (wake(self, page_address) == 0)
            return SERVED;
    } else if (error == ESRCH) {
        set_slot(self, PEER_GONE, 1);
        return SERVED;
    }
    set_state(self, page, state);
    forget(self, page + 1, page + pages);
    if (error == EAGAIN) { /* nothing is left mapped that the states claim: serve it again later */
        add(self, DEFERRED, 1);
        return RETRY_LATER;
    }
    add(self, FAULTS, -1);
    set_slot(self, SEQUENTIAL_NEXT, saved_next);
    set_slot(self, WINDOW_PAGES, saved_window);
    return HAND_BACK;
}

static uint64_t now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* The next messages into the batch: their byte count, 0 once stop() was called or the wake
 * fd is readable, or -errno. After the last message the loop keeps reading for spin_ns
 * before it sleeps in poll: a faulting thread's next fault usually comes within a few
 * microseconds, and sleeping between them costs a wakeup each time (one more cross-CPU
 * wakeup per fault: about 15 us in a VM whose idle CPUs halt). sched_yield lets a
 * faulting thread that shares this CPU run. */
static ssize_t next_messages(FaultLoop *self, Batch *batch) {
    struct pollfd fds[2] = {{.fd = self->wake_fd, .events = POLLIN}, {.fd = self->uffd, .events = POLLIN}};
    uint64_t deadline = now_ns() + self->spin_ns;
    while (!__atomic_load_n(&self->stopping, __ATOMIC_RELAXED)) {
        ssize_t got = read(self->uffd, batch->messages, sizeof batch->messages);
        if (got > 0)
            return got;
        if (got < 0 && errno != EAGAIN && errno != EINTR)
            return -errno;
        if (now_ns() < deadline) {
            sched_yield();
            continue;
        }
        if (poll(fds, 2, -1) < 0 && errno != EINTR)
            return -errno;
        if (fds[0].revents)
            return 0;
        deadline = now_ns() + self->spin_ns;
    }
    return 0;
}

/* Serve batches until one holds a message for Python, a fault must be retried later,
 * or stop was asked for. Returns 0 or the errno of a failed poll or read. */
static int serve(FaultLoop *self, Batch *batch) {
    for (;;) {
        ssize_t got = next_messages(self, batch);
        if (got <= 0)
            return (int)-got;
        size_t count = (size_t)got / sizeof(struct uffd_msg);
        /* Python applies a batch's REMOVE events before its faults: give it the whole batch. */
        for (size_t index = 0; index < count; index++) {
            if (batch->messages[index].event != UFFD_EVENT_PAGEFAULT) {
                batch->unhandled = count;
                return 0;
            }
        }
        for (size_t index = 0; index < count; index++) {
            Outcome outcome = serve_fault(self, &batch->messages[index]);
            if (outcome == RETRY_LATER) {
                batch->retry[batch->retries++] = batch->messages[index];
            } else if (outcome == HAND_BACK) {
                batch->first_unhandled = index;
                batch->unhandled = count - index;
                return 0;
            }
        }
        if (batch->retries > 0)
            return 0;
    }
}

static int check_set_up(FaultLoop *self) {
    if (self->log == NULL)
        PyErr_SetString(PyExc_RuntimeError, "the FaultLoop was not set up: its __init__ failed or never ran");
    return self->log != NULL;
}

static PyObject *FaultLoop_run(FaultLoop *self, PyObject *Py_UNUSED(ignored)) {
    if (!check_set_up(self))
        return NULL;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the fault loop is already running in another thread");
        return NULL;
    }
    Batch *batch = PyMem_RawCalloc(1, sizeof(Batch));
    if (batch == NULL)
        return PyErr_NoMemory();
    self->running = 1;
    int error;
    Py_BEGIN_ALLOW_THREADS
    error = serve(self, batch);
    Py_END_ALLOW_THREADS
    self->running = 0;
    PyObject *result = NULL;
    if (error != 0) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
    } else {
        result = Py_BuildValue("(y#y#)", (const char *)&batch->messages[batch->first_unhandled],
                               (Py_ssize_t)(batch->unhandled * sizeof(struct uffd_msg)),
                               (const char *)batch->retry,
                               (Py_ssize_t)(batch->retries * sizeof(struct uffd_msg)));
    }
    PyMem_RawFree(batch);
    return result;
}

static PyObject *FaultLoop_stop(FaultLoop *self, PyObject *Py_UNUSED(ignored)) {
    __atomic_store_n(&self->stopping, 1, __ATOMIC_RELAXED);
    Py_RETURN_NONE;
}

static PyObject *FaultLoop_drain(FaultLoop *self, PyObject *Py_UNUSED(ignored)) {
    if (!check_set_up(self))
        return NULL;
    uint64_t head = __atomic_load_n(&self->log_head, __ATOMIC_ACQUIRE);
    uint64_t tail = self->log_tail;
    PyObject *entries = PyList_New((Py_ssize_t)(head - tail));
    if (entries == NULL)
        return NULL;
    for (uint64_t position = tail; position < head; position++) {
        PyObject *entry = PyLong_FromUnsignedLongLong(self->log[position % self->log_capacity]);
        if (entry == NULL) {
            Py_DECREF(entries);
            return NULL;
        }
        PyList_SET_ITEM(entries, (Py_ssize_t)(position - tail), entry);
    }
    __atomic_store_n(&self->log_tail, head, __ATOMIC_RELEASE);
    return entries;
}

static int get_buffer(PyObject *object, Py_buffer *view, int writable, Py_ssize_t unit, const char *name) {
    if (PyObject_GetBuffer(object, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    if (view->len % unit != 0) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, not a multiple of %zd", name, view->len, unit);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int FaultLoop_init(FaultLoop *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"uffd",   "wake_fd", "page_size", "regions",      "segments",      "states",
                               "copy",   "zeros",   "shared",    "log_capacity", "write_protect", "spin_ns",
                               NULL};
    PyObject *regions, *segments, *states, *copy, *zeros, *shared;
    unsigned long long page_size, log_capacity, spin_ns;
    int uffd, wake_fd, write_protect;
    if (self->log != NULL || self->regions.obj != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a FaultLoop is set up once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$iiKOOOOOOKpK", keywords, &uffd, &wake_fd, &page_size,
                                     &regions, &segments, &states, &copy, &zeros, &shared, &log_capacity,
                                     &write_protect, &spin_ns))
        return -1;
    if (page_size == 0 || (page_size & (page_size - 1)) != 0 || log_capacity == 0) {
        PyErr_SetString(PyExc_ValueError, "page_size must be a power of two and log_capacity positive");
        return -1;
    }
    if (get_buffer(regions, &self->regions, 0, sizeof(Region), "regions") < 0)
        return -1;
    if (get_buffer(segments, &self->segments, 0, sizeof(Segment), "segments") < 0)
        return -1;
    if (get_buffer(states, &self->states, 1, 1, "states") < 0)
        return -1;
    if (get_buffer(copy, &self->copy, 1, (Py_ssize_t)page_size, "copy") < 0)
        return -1;
    if (get_buffer(zeros, &self->zeros, 0, (Py_ssize_t)page_size, "zeros") < 0)
        return -1;
    if (get_buffer(shared, &self->shared, 1, sizeof(int64_t), "shared") < 0)
        return -1;
    if (self->regions.len == 0 || self->copy.len == 0 || self->zeros.len == 0 ||
        self->shared.len < (Py_ssize_t)(SLOTS * sizeof(int64_t))) {
        PyErr_SetString(PyExc_ValueError, "regions, copy and zeros must not be empty; shared needs SLOTS slots");
        return -1;
    }
    if ((uintptr_t)self->copy.buf % SMALL_PAGE != 0 || (uintptr_t)self->zeros.buf % SMALL_PAGE != 0) {
        PyErr_SetString(PyExc_ValueError, "copy and zeros must start on a page boundary");
        return -1;
    }
    self->log = PyMem_Calloc(log_capacity, sizeof(uint64_t));
    if (self->log == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->uffd = uffd;
    self->wake_fd = wake_fd;
    self->page_size = page_size;
    self->log_capacity = log_capacity;
    self->write_protect = write_protect;
    self->spin_ns = spin_ns;
    return 0;
}

static void FaultLoop_dealloc(FaultLoop *self) {
    Py_buffer *views[] = {&self->regions, &self->segments, &self->states, &self->copy, &self->zeros, &self->shared};
    for (size_t index = 0; index < sizeof views / sizeof views[0]; index++) {
        if (views[index]->obj != NULL)
            PyBuffer_Release(views[index]);
    }
    PyMem_Free(self->log);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FaultLoop_methods[] = {
    {"run", (PyCFunction)FaultLoop_run, METH_NOARGS,
     "Serve faults until Python must act; returns (messages to handle, faults to retry later)."},
    {"stop", (PyCFunction)FaultLoop_stop, METH_NOARGS,
     "Make run() return soon, from any thread; the loop does not run again after."},
    {"drain", (PyCFunction)FaultLoop_drain, METH_NOARGS,
     "Take the access log entries (page * 2 + write) appended since the last drain."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FaultLoopType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ember.uffd._faultloop.FaultLoop",
    .tp_basicsize = sizeof(FaultLoop),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The fast path of one page server's fault loop (see ember.uffd.server).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FaultLoop_init,
    .tp_dealloc = (destructor)FaultLoop_dealloc,
    .tp_methods = FaultLoop_methods,
};

static struct PyModuleDef faultloop_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ember.uffd._faultloop",
    .m_doc = "The page server's fault loop in C (see ember.uffd.server).",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__faultloop(void) {
    if (PyType_Ready(&FaultLoopType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&faultloop_module);
    if (module == NULL)
        return NULL;
    struct {
        const char *name;
        long value;
    } constants[] = {
        {"NOT_PRESENT", NOT_PRESENT}, {"DIRTY", DIRTY},
        {"ZERO", ZERO},               {"REMOVED", REMOVED},
        {"CLEAN", CLEAN},             {"FAULTS", FAULTS},
        {"INSTALLS", INSTALLS},       {"BYTES_INSTALLED", BYTES_INSTALLED},
        {"ZERO_INSTALLS", ZERO_INSTALLS}, {"DEFERRED", DEFERRED},
        {"PEER_GONE", PEER_GONE},     {"SEQUENTIAL_NEXT", SEQUENTIAL_NEXT},
        {"WINDOW_PAGES", WINDOW_PAGES}, {"SLOTS", SLOTS},
    };
    for (size_t index = 0; index < sizeof constants / sizeof constants[0]; index++) {
        if (PyModule_AddIntConstant(module, constants[index].name, constants[index].value) < 0) {
            Py_DECREF(module);
            return NULL;
        }
    }
    Py_INCREF(&FaultLoopType);
    if (PyModule_AddObject(module, "FaultLoop", (PyObject *)&FaultLoopType) < 0) {
        Py_DECREF(&FaultLoopType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
