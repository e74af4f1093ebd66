/*
 * ember.storage._mapped: read-only maps of stored files, and the layered-read copy loop in C.
 *
 * Why: a layered 4 MiB read of a fragmented chain crosses ~100 stored segments. Through
 * Python each costs an interpreter round and a preadv (syscalls are dear on this machine),
 * which caps the read far below one flat preadv. Here the whole read is one call: the loop
 * walks the mapping columns itself, zero-fills nil pieces and memcpys stored ones from
 * mapped files, without the GIL. Anything it cannot serve (a chunk not cached or not
 * mapped yet, a compressed build, a gap, a data object shorter than the header needs) makes
 * it stop and return how far it got: Python serves that piece through the storage's normal
 * read path (which fetches, validates and raises the ember errors), maps what it can, and
 * calls the loop again. The Python path stays the only implementation of every miss.
 *
 * MapSet: every region one storage instance has mapped. Python publishes a region's
 * address in a chunk table (below) and, to drop it, zeroes the table slot and calls
 * retire(). The loop reads slots without the GIL, so a retired region may still be in use:
 * it is unmapped only after every reader that could have seen its address is done. Readers
 * register in the current phase (0 or 1) while holding the GIL; retire() collects regions
 * in `fresh`; a reclaim flips the phase, turning `fresh` into `waiting`, whose regions are
 * unmapped once the old phase's reader count drains to zero (checked by each reader as it
 * leaves, and by every retire). Readers that registered after the flip registered after the
 * slot was zeroed, so they cannot see the address. Every MapSet operation and every reader
 * registration runs under the GIL without releasing it, which is what makes the plain
 * counters safe. A MapSet unmaps whatever is left when it is freed; Gathers keep it alive.
 *
 * Chunk table (one per stored object, a uint64 numpy array owned by Python):
 *   [0] object size   [1] chunk shift (12..63)   [2] chunk count
 *   then per chunk: address of its mapped bytes (0: not mapped), referenced flag
 * Chunk i holds object bytes [i << shift, min((i + 1) << shift, object size)), and a
 * non-zero address points at a region of exactly that many readable bytes. A local object
 * is one chunk (shift 63); a chunk cache maps its 4 MiB chunk files (shift 22). The loop
 * sets the referenced flag of chunks it reads; Python's eviction clock clears it.
 *
 * SIGBUS: reading a mapped page past the end of a file that was truncated after it was
 * mapped raises SIGBUS and kills the process (a preadv would just return short). ember never
 * truncates a stored object or chunk file in place: every write goes to a temporary file
 * that is renamed over the name, and deletes unlink, so a mapped inode keeps its size until
 * the map goes. A file truncated in place behind ember's back (by hand, by another tool) is
 * the hazard; mmap() is refused on network and user-space file systems (NFS, SMB, FUSE,
 * Ceph, 9p, AFS), where another host can make a page unreadable, and those reads stay on
 * the preadv path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#define TABLE_HEADER 3
#define MIN_SHIFT 12
#define MAX_SHIFT 63

/* ---------------------------------------------------------------- regions and MapSet */

static int fd_argument(PyObject *arg, int *out) {
    long value = PyLong_AsLong(arg);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < 0 || value > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "not a file descriptor");
        return -1;
    }
    *out = (int)value;
    return 0;
}

typedef struct {
    void *address;
    size_t length;
} Region;

typedef struct {
    Region *items;
    size_t count, capacity;
} Regions;

static int regions_push(Regions *regions, Region region) {
    if (regions->count == regions->capacity) {
        size_t capacity = regions->capacity ? regions->capacity * 2 : 16;
        Region *items = PyMem_Realloc(regions->items, capacity * sizeof(Region));
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        regions->items = items;
        regions->capacity = capacity;
    }
    regions->items[regions->count++] = region;
    return 0;
}

static void regions_unmap(Regions *regions) {
    for (size_t i = 0; i < regions->count; i++) {
        munmap(regions->items[i].address, regions->items[i].length);
    }
    regions->count = 0;
}

static void regions_free(Regions *regions) {
    regions_unmap(regions);
    PyMem_Free(regions->items);
    regions->items = NULL;
    regions->capacity = 0;
}

typedef struct {
    PyObject_HEAD
    Regions live;    /* mapped and possibly published in a chunk table */
    Regions fresh;   /* retired since the last phase flip */
    Regions waiting; /* retired before the last flip: unmapped once readers[1 - phase] is 0 */
    Py_ssize_t readers[2];
    int phase;
    unsigned long long hits;
} MapSet;

static void mapset_reclaim(MapSet *self) {
    int old = 1 - self->phase;
    if (self->waiting.count) {
        if (self->readers[old]) {
            return;
        }
        regions_unmap(&self->waiting);
    }
    if (self->fresh.count) {
        Regions swap = self->waiting;
        self->waiting = self->fresh;
        self->fresh = swap;
        self->phase = old;
        if (self->readers[1 - self->phase] == 0) {
            regions_unmap(&self->waiting);
        }
    }
}

static int mapset_enter(MapSet *self) {
    int phase = self->phase;
    self->readers[phase]++;
    return phase;
}

static void mapset_leave(MapSet *self, int phase) {
    self->readers[phase]--;
    if (self->waiting.count || self->fresh.count) {
        mapset_reclaim(self);
    }
}

static PyObject *mapset_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, ":MapSet", keywords)) {
        return NULL;
    }
    return type->tp_alloc(type, 0); /* zero-filled: empty lists, phase 0, no readers */
}

static void mapset_dealloc(MapSet *self) {
    regions_free(&self->live);
    regions_free(&self->fresh);
    regions_free(&self->waiting);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(mapset_map_doc,
             "map(fd, length) -> address\n\n"
             "Map the first length bytes of fd read-only and shared; the region stays until retire().");

static PyObject *mapset_map(MapSet *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "map() takes fd and length");
        return NULL;
    }
    int fd;
    if (fd_argument(args[0], &fd) < 0) {
        return NULL;
    }
    Py_ssize_t length = PyLong_AsSsize_t(args[1]);
    if (length == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (length <= 0) {
        PyErr_SetString(PyExc_ValueError, "map() needs a length > 0");
        return NULL;
    }
    void *address;
    Py_BEGIN_ALLOW_THREADS
    address = mmap(NULL, (size_t)length, PROT_READ, MAP_SHARED, fd, 0);
    Py_END_ALLOW_THREADS
    if (address == MAP_FAILED) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (regions_push(&self->live, (Region){address, (size_t)length}) < 0) {
        munmap(address, (size_t)length);
        return NULL;
    }
    return PyLong_FromVoidPtr(address);
}

PyDoc_STRVAR(mapset_retire_doc,
             "retire(address)\n\n"
             "Unmap a region once no reader can be using it; zero its table slot first.");

static PyObject *mapset_retire(MapSet *self, PyObject *arg) {
    void *address = PyLong_AsVoidPtr(arg);
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    for (size_t i = 0; i < self->live.count; i++) {
        if (self->live.items[i].address == address) {
            Region region = self->live.items[i];
            if (regions_push(&self->fresh, region) < 0) {
                return NULL;
            }
            self->live.items[i] = self->live.items[--self->live.count];
            mapset_reclaim(self);
            Py_RETURN_NONE;
        }
    }
    PyErr_SetString(PyExc_ValueError, "retire() of an address this MapSet did not map");
    return NULL;
}

static PyObject *mapset_get_mapped(MapSet *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(self->live.count);
}

static PyObject *mapset_get_pending(MapSet *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(self->fresh.count + self->waiting.count);
}

static PyObject *mapset_get_hits(MapSet *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->hits);
}

static PyMethodDef mapset_methods[] = {
    {"map", (PyCFunction)(void (*)(void))mapset_map, METH_FASTCALL, mapset_map_doc},
    {"retire", (PyCFunction)mapset_retire, METH_O, mapset_retire_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef mapset_getset[] = {
    {"mapped", (getter)mapset_get_mapped, NULL, "regions mapped and not retired", NULL},
    {"pending", (getter)mapset_get_pending, NULL, "retired regions a reader may still use", NULL},
    {"hits", (getter)mapset_get_hits, NULL, "chunk pieces copied from maps", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MapSetType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ember.storage._mapped.MapSet",
    .tp_basicsize = sizeof(MapSet),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The regions one storage instance mapped, unmapped only when no reader can use them.",
    .tp_new = mapset_new,
    .tp_dealloc = (destructor)mapset_dealloc,
    .tp_methods = mapset_methods,
    .tp_getset = mapset_getset,
};

/* ---------------------------------------------------------------- Gather */

typedef struct {
    uint64_t *slots; /* NULL: a nil build, read as zeros */
    uint64_t object_size, shift, count;
} Source;

typedef struct {
    PyObject_HEAD
    MapSet *maps;
    Py_buffer columns[4]; /* offsets, lengths, storage offsets (uint64), build index (uint32) */
    Py_buffer *tables;    /* one per source; buf NULL for nil sources */
    Source *sources;
    Py_ssize_t source_count, rows;
    uint64_t size;
} Gather;

static int unsigned_column(Py_buffer *view, Py_ssize_t itemsize, const char *name) {
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@') {
        format++;
    }
    if (view->itemsize != itemsize || strchr("BHILQ", *format) == NULL || format[1] != '\0') {
        PyErr_Format(PyExc_TypeError, "%s must be a contiguous array of %zd-byte unsigned integers", name,
                     itemsize);
        return -1;
    }
    return 0;
}

static void gather_release(Gather *self) {
    for (int i = 0; i < 4; i++) {
        if (self->columns[i].obj) {
            PyBuffer_Release(&self->columns[i]);
        }
    }
    if (self->tables) {
        for (Py_ssize_t i = 0; i < self->source_count; i++) {
            if (self->tables[i].obj) {
                PyBuffer_Release(&self->tables[i]);
            }
        }
    }
    PyMem_Free(self->tables);
    PyMem_Free(self->sources);
    self->tables = NULL;
    self->sources = NULL;
    Py_CLEAR(self->maps);
}

static int gather_source(Gather *self, Py_ssize_t index, PyObject *item) {
    Source *source = &self->sources[index];
    if (item == Py_None) {
        return 0;
    }
    Py_buffer *view = &self->tables[index];
    if (PyObject_GetBuffer(item, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        return -1;
    }
    if (unsigned_column(view, 8, "a chunk table") < 0) {
        return -1;
    }
    uint64_t *table = view->buf;
    Py_ssize_t entries = view->len / 8;
    if (entries < TABLE_HEADER || table[1] < MIN_SHIFT || table[1] > MAX_SHIFT ||
        table[2] > (uint64_t)(entries - TABLE_HEADER) / 2) {
        PyErr_SetString(PyExc_ValueError, "chunk table header does not match the table");
        return -1;
    }
    source->slots = table + TABLE_HEADER;
    source->object_size = table[0];
    source->shift = table[1];
    source->count = table[2];
    return 0;
}

static PyObject *gather_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"maps", "offsets", "lengths", "storage_offsets", "build_index",
                               "size", "sources", NULL};
    PyObject *maps, *columns[4], *sources;
    unsigned long long size;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!OOOOKO:Gather", keywords, &MapSetType, &maps,
                                     &columns[0], &columns[1], &columns[2], &columns[3], &size,
                                     &sources)) {
        return NULL;
    }
    Gather *self = (Gather *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->maps = (MapSet *)Py_NewRef(maps);
    self->size = size;
    static const char *names[] = {"offsets", "lengths", "storage_offsets", "build_index"};
    for (int i = 0; i < 4; i++) {
        if (PyObject_GetBuffer(columns[i], &self->columns[i], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0 ||
            unsigned_column(&self->columns[i], i == 3 ? 4 : 8, names[i]) < 0) {
            goto fail;
        }
    }
    self->rows = self->columns[0].len / 8;
    for (int i = 1; i < 4; i++) {
        if (self->columns[i].len / self->columns[i].itemsize != self->rows) {
            PyErr_SetString(PyExc_ValueError, "mapping columns differ in length");
            goto fail;
        }
    }
    PyObject *sequence = PySequence_Fast(sources, "sources must be a sequence");
    if (sequence == NULL) {
        goto fail;
    }
    self->source_count = PySequence_Fast_GET_SIZE(sequence);
    self->tables = PyMem_Calloc(self->source_count ? self->source_count : 1, sizeof(Py_buffer));
    self->sources = PyMem_Calloc(self->source_count ? self->source_count : 1, sizeof(Source));
    if (self->tables == NULL || self->sources == NULL) {
        Py_DECREF(sequence);
        PyErr_NoMemory();
        goto fail;
    }
    for (Py_ssize_t i = 0; i < self->source_count; i++) {
        if (gather_source(self, i, PySequence_Fast_GET_ITEM(sequence, i)) < 0) {
            Py_DECREF(sequence);
            goto fail;
        }
    }
    Py_DECREF(sequence);
    const uint32_t *build_index = self->columns[3].buf;
    for (Py_ssize_t row = 0; row < self->rows; row++) {
        if ((Py_ssize_t)build_index[row] >= self->source_count) {
            PyErr_SetString(PyExc_ValueError, "a build index points past the sources");
            goto fail;
        }
    }
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

static void gather_dealloc(Gather *self) {
    gather_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Copy object bytes [at, at + length) of a stored source to dst; returns the bytes copied,
 * fewer when a chunk on the way is not mapped. */
static uint64_t copy_stored(const Source *source, char *dst, uint64_t at, uint64_t length, uint64_t *hits) {
    uint64_t done = 0;
    while (done < length) {
        uint64_t position = at + done;
        uint64_t chunk = position >> source->shift;
        if (chunk >= source->count) {
            break;
        }
        uint64_t *slot = source->slots + 2 * chunk;
        const char *base = (const char *)(uintptr_t)__atomic_load_n(slot, __ATOMIC_ACQUIRE);
        if (base == NULL) {
            break;
        }
        uint64_t chunk_start = chunk << source->shift;
        uint64_t chunk_length = source->object_size - chunk_start;
        if (source->shift < 63 && chunk_length > (UINT64_C(1) << source->shift)) {
            chunk_length = UINT64_C(1) << source->shift;
        }
        uint64_t piece = chunk_start + chunk_length - position;
        if (piece > length - done) {
            piece = length - done;
        }
        memcpy(dst + done, base + (position - chunk_start), piece);
        if (!__atomic_load_n(slot + 1, __ATOMIC_RELAXED)) {
            __atomic_store_n(slot + 1, 1, __ATOMIC_RELAXED);
        }
        ++*hits;
        done += piece;
    }
    return done;
}

/* Fill device bytes [position, end) into buffer, whose first byte is device byte `origin`.
 * Returns the device offset reached: `end` when done, else where Python has to take over. */
static uint64_t gather_run(const Gather *self, char *buffer, uint64_t origin, uint64_t position, uint64_t end,
                           uint64_t *hits) {
    const uint64_t *offsets = self->columns[0].buf;
    const uint64_t *lengths = self->columns[1].buf;
    const uint64_t *storage_offsets = self->columns[2].buf;
    const uint32_t *build_index = self->columns[3].buf;
    Py_ssize_t low = 0, high = self->rows; /* first row starting after position */
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (offsets[middle] <= position) {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    for (Py_ssize_t row = low - 1; position < end && row >= 0 && row < self->rows; row++) {
        uint64_t shift = position - offsets[row];
        if (position < offsets[row] || shift >= lengths[row]) {
            break; /* a gap or an unsorted header: Python reports it */
        }
        uint64_t take = lengths[row] - shift;
        if (take > end - position) {
            take = end - position;
        }
        const Source *source = &self->sources[build_index[row]];
        char *dst = buffer + (position - origin);
        if (source->slots == NULL) {
            memset(dst, 0, take);
            position += take;
            continue;
        }
        uint64_t at = storage_offsets[row] + shift;
        if (at < shift || at > source->object_size || take > source->object_size - at) {
            break; /* the object is shorter than the header says: Python raises */
        }
        uint64_t copied = copy_stored(source, dst, at, take, hits);
        position += copied;
        if (copied < take) {
            break;
        }
    }
    return position;
}

/* Run the loop over [origin + start, origin + count) of buffer without the GIL, even for a
 * few KiB: a mapped page that is not in the page cache faults into disk I/O, which must not
 * stall the other threads (it costs ~0.1 us per read). */
static uint64_t gather_span(Gather *self, char *buffer, uint64_t origin, uint64_t start, uint64_t count,
                            uint64_t *hits) {
    uint64_t reached;
    int phase = mapset_enter(self->maps);
    Py_BEGIN_ALLOW_THREADS
    reached = gather_run(self, buffer, origin, origin + start, origin + count, hits);
    Py_END_ALLOW_THREADS
    mapset_leave(self->maps, phase);
    return reached - origin;
}

/* A non-negative offset or length; one past 2**63 saturates (it lies past any device end). */
static int offset_argument(PyObject *arg, uint64_t *out) {
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(arg, &overflow);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow > 0) {
        *out = UINT64_MAX;
        return 0;
    }
    if (overflow < 0 || value < 0) {
        PyErr_SetString(PyExc_ValueError, "offsets and lengths must be >= 0");
        return -1;
    }
    *out = (uint64_t)value;
    return 0;
}

PyDoc_STRVAR(gather_readinto_doc,
             "readinto(buffer, offset, start) -> int\n\n"
             "Fill buffer[start:] from device offset + start, up to the device end. Returns the\n"
             "bytes the read fills (n) when done, or -(stop + 1) when Python must serve the piece\n"
             "at buffer[stop] before calling again with start=stop.");

static PyObject *gather_readinto(Gather *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t offset, start;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "readinto() takes buffer, offset and start");
        return NULL;
    }
    if (offset_argument(args[1], &offset) < 0 || offset_argument(args[2], &start) < 0) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    uint64_t count = offset >= self->size ? 0 : self->size - offset;
    if ((uint64_t)view.len < count) {
        count = (uint64_t)view.len;
    }
    uint64_t stop = count, hits = 0;
    if (start < count) {
        stop = gather_span(self, view.buf, offset, start, count, &hits);
        self->maps->hits += hits;
    }
    PyBuffer_Release(&view);
    if (stop == count) {
        return PyLong_FromUnsignedLongLong(count);
    }
    return PyLong_FromLongLong(-(long long)stop - 1);
}

PyDoc_STRVAR(gather_read_doc,
             "read(offset, length) -> bytes | None\n\n"
             "Device bytes [offset, offset + length), short at the device end; None when any\n"
             "piece needs Python (nothing is counted then: the caller reads again through readinto).");

static PyObject *gather_read(Gather *self, PyObject *const *args, Py_ssize_t nargs) {
    uint64_t offset, length;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "read() takes offset and length");
        return NULL;
    }
    if (offset_argument(args[0], &offset) < 0 || offset_argument(args[1], &length) < 0) {
        return NULL;
    }
    uint64_t count = offset >= self->size ? 0 : self->size - offset;
    if (length < count) {
        count = length;
    }
    if (count > PY_SSIZE_T_MAX) {
        return PyErr_NoMemory();
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)count);
    if (result == NULL || count == 0) {
        return result;
    }
    uint64_t hits = 0;
    if (gather_span(self, PyBytes_AS_STRING(result), offset, 0, count, &hits) != count) {
        Py_DECREF(result);
        Py_RETURN_NONE;
    }
    self->maps->hits += hits;
    return result;
}

static PyMethodDef gather_methods[] = {
    {"readinto", (PyCFunction)(void (*)(void))gather_readinto, METH_FASTCALL, gather_readinto_doc},
    {"read", (PyCFunction)(void (*)(void))gather_read, METH_FASTCALL, gather_read_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GatherType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ember.storage._mapped.Gather",
    .tp_basicsize = sizeof(Gather),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One device's mapping columns and chunk tables: copies planned reads without the GIL.",
    .tp_new = gather_new,
    .tp_dealloc = (destructor)gather_dealloc,
    .tp_methods = gather_methods,
};

/* ---------------------------------------------------------------- module */

/* File systems where a mapped page can fail to read later (another host, a user-space
 * server): a preadv there returns an error, a mapped read would raise SIGBUS. */
static const unsigned long REMOTE_FILE_SYSTEMS[] = {
    0x6969UL,     /* NFS */
    0x517BUL,     /* SMB */
    0xFF534D42UL, /* CIFS */
    0xFE534D42UL, /* SMB2 */
    0x65735546UL, /* FUSE */
    0x00C36400UL, /* Ceph */
    0x01021997UL, /* 9p */
    0x5346414FUL, /* AFS */
    0x6B414653UL, /* kAFS */
};

PyDoc_STRVAR(mappable_doc,
             "mappable(fd) -> bool\n\n"
             "Whether fd is a regular file on a file system where mapped reads cannot fail later.");

static PyObject *mappable(PyObject *module, PyObject *arg) {
    (void)module;
    int fd;
    if (fd_argument(arg, &fd) < 0) {
        return NULL;
    }
    struct stat status;
    struct statfs file_system;
    if (fstat(fd, &status) < 0 || fstatfs(fd, &file_system) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (!S_ISREG(status.st_mode)) {
        Py_RETURN_FALSE;
    }
    for (size_t i = 0; i < sizeof(REMOTE_FILE_SYSTEMS) / sizeof(REMOTE_FILE_SYSTEMS[0]); i++) {
        if ((unsigned long)file_system.f_type == REMOTE_FILE_SYSTEMS[i]) {
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef module_methods[] = {
    {"mappable", (PyCFunction)mappable, METH_O, mappable_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mapped_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "ember.storage._mapped",
    .m_doc = "Read-only maps of stored files and the layered-read copy loop (see _mapped.c).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__mapped(void) {
    if (PyType_Ready(&MapSetType) < 0 || PyType_Ready(&GatherType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&mapped_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "TABLE_HEADER", TABLE_HEADER) < 0 ||
        PyModule_AddObjectRef(module, "MapSet", (PyObject *)&MapSetType) < 0 ||
        PyModule_AddObjectRef(module, "Gather", (PyObject *)&GatherType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
