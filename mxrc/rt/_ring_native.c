/* The ring's two hot paths in C: the cycle's publish and the reader's copy-and-decode.
 *
 * The protocol, the layout and every decision about lapping stay in mxrc/rt/ring.py,
 * which is also the reference implementation: the Python writer and reader there do
 * exactly what this file does, and the tests check both against each other byte for byte.
 * This file exists because CPython pays per record for a Python frame, attribute loads and
 * four C calls (~600 ns), and for decoding a record into a GC-tracked tuple (~330 ns);
 * here a publish is one C call and a decoded record an untracked tuple.
 *
 * Memory ordering is spelled with GCC's __atomic builtins, as a C11 seqlock (Boehm,
 * "Can seqlocks get along with programming language memory models?", 2012):
 *
 *   writer: seq = 2n+1 (relaxed); fence(release); fields; seq = 2n+2 (release);
 *           head = n+1 (release)
 *   reader: s1 = seq (acquire); copy fields; fence(acquire); s2 = seq (relaxed);
 *           the copy is record n only if s1 == s2 == 2n+2
 *
 * On x86-64 every one of these is a plain load or store plus a compiler barrier: the
 * same instructions the Python implementation relies on, now with the compiler told.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define SLOT_HEADER 64   /* seq, index, rtype, flags, cycle, t_ns, trace_id, span_id */
#define TRACE_ID_SIZE 16
#define SPAN_ID_SIZE 8
#define MAX_PAYLOAD 4096 /* RingLayout's bound */
/* The SHA-256 of this file as it was compiled (hatch_build.py passes it), so that a
   source tree can tell a module built from an older version of it. */
#ifndef MXRC_SOURCE_SHA256
#define MXRC_SOURCE_SHA256 "unknown"
#endif
#define RECORD_FIELDS 8  /* Record: seq rtype trace_flags cycle t_ns trace_id span_id payload */

/* The writer and reader address the region through a memoryview the Python side owns
 * (the segment's word view), without exporting a buffer of their own: an export would
 * make the segment's close (mmap.close) fail. Instead they check, on every call, that
 * the view has not been released, which the segment does before it unmaps. */
static int
view_released(PyObject *view)
{
    PyMemoryViewObject *mv = (PyMemoryViewObject *)view;
    return (mv->flags & _Py_MEMORYVIEW_RELEASED) ||
           (mv->mbuf->flags & _Py_MANAGED_BUFFER_RELEASED);
}

static int
check_view(PyObject *view)
{
    if (view_released(view)) {
        PyErr_SetString(PyExc_ValueError, "the ring's shared memory has been closed");
        return -1;
    }
    return 0;
}

/* ---- writer ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *words;    /* memoryview over the whole region */
    PyObject *payload;  /* bytearray: the staged payload, filled in place by the cycle */
    PyObject *trace_id; /* bytearray(16), updated in place by RingWriter.set_trace* */
    PyObject *span_id;  /* bytearray(8) */
    Py_ssize_t slots;   /* region offset of slot 0 */
    Py_ssize_t head;    /* region offset of the head word */
    Py_ssize_t record_size;
    Py_ssize_t payload_size;
    uint64_t mask;
    uint64_t next;
    uint8_t flags;
} Writer;

static void
Writer_dealloc(Writer *self)
{
    Py_XDECREF(self->words);
    Py_XDECREF(self->payload);
    Py_XDECREF(self->trace_id);
    Py_XDECREF(self->span_id);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
geometry_fits(Py_buffer *view, Py_ssize_t slots, Py_ssize_t capacity, Py_ssize_t record_size,
              Py_ssize_t payload_size)
{
    if (capacity < 2 || (capacity & (capacity - 1)) || payload_size < 0 ||
        payload_size > MAX_PAYLOAD || record_size < SLOT_HEADER + payload_size ||
        record_size % 64 || slots < 0 || slots % 8 ||
        capacity > (PY_SSIZE_T_MAX - slots) / record_size ||
        slots + capacity * record_size > view->len) {
        PyErr_Format(PyExc_ValueError,
                     "ring geometry (slots at %zd, %zd x %zd bytes, payload %zd) does not fit "
                     "a region of %zd bytes",
                     slots, capacity, record_size, payload_size, view->len);
        return 0;
    }
    return 1;
}

static int
Writer_init(Writer *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"words",   "slots",    "head",    "capacity", "record_size",
                            "payload", "trace_id", "span_id", "next",     NULL};
    PyObject *words, *payload, *trace_id, *span_id;
    Py_ssize_t slots, head, capacity, record_size;
    unsigned long long next;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!nnnnO!O!O!K", names, &PyMemoryView_Type,
                                     &words, &slots, &head, &capacity, &record_size,
                                     &PyByteArray_Type, &payload, &PyByteArray_Type, &trace_id,
                                     &PyByteArray_Type, &span_id, &next))
        return -1;
    if (check_view(words) < 0)
        return -1;
    Py_buffer *view = PyMemoryView_GET_BUFFER(words);
    if (view->readonly || !PyBuffer_IsContiguous(view, 'C')) {
        PyErr_SetString(PyExc_ValueError, "the ring's region must be writable and contiguous");
        return -1;
    }
    Py_ssize_t payload_size = PyByteArray_GET_SIZE(payload);
    if (!geometry_fits(view, slots, capacity, record_size, payload_size))
        return -1;
    if (head < 0 || head % 8 || head > view->len - 8) {
        PyErr_Format(PyExc_ValueError, "head word offset %zd is outside the region", head);
        return -1;
    }
    if (PyByteArray_GET_SIZE(trace_id) != TRACE_ID_SIZE ||
        PyByteArray_GET_SIZE(span_id) != SPAN_ID_SIZE) {
        PyErr_SetString(PyExc_ValueError, "trace_id must be 16 bytes and span_id 8 bytes");
        return -1;
    }
    Py_INCREF(words);
    Py_XSETREF(self->words, words);
    Py_INCREF(payload);
    Py_XSETREF(self->payload, payload);
    Py_INCREF(trace_id);
    Py_XSETREF(self->trace_id, trace_id);
    Py_INCREF(span_id);
    Py_XSETREF(self->span_id, span_id);
    self->slots = slots;
    self->head = head;
    self->record_size = record_size;
    self->payload_size = payload_size;
    self->mask = (uint64_t)capacity - 1;
    self->next = next;
    self->flags = 0;
    return 0;
}

/* publish(rtype, cycle, t_ns) -> index. Every argument is converted before the slot is
 * touched, so a value out of range raises with nothing written at all. */
static PyObject *
Writer_publish(Writer *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "publish(rtype, cycle, t_ns) takes 3 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    unsigned long rtype = PyLong_AsUnsignedLong(args[0]);
    if (rtype == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    if (rtype > 0xFFFF) {
        PyErr_Format(PyExc_OverflowError, "rtype %lu does not fit a u16", rtype);
        return NULL;
    }
    uint64_t cycle = PyLong_AsUnsignedLongLong(args[1]);
    if (cycle == (uint64_t)-1 && PyErr_Occurred())
        return NULL;
    int64_t t_ns = PyLong_AsLongLong(args[2]);
    if (t_ns == -1 && PyErr_Occurred())
        return NULL;
    if (check_view(self->words) < 0)
        return NULL;
    if (PyByteArray_GET_SIZE(self->payload) != self->payload_size) {
        PyErr_SetString(PyExc_ValueError, "the staged payload was resized");
        return NULL;
    }

    uint64_t n = self->next;
    uint16_t rtype16 = (uint16_t)rtype;
    unsigned char fields[SLOT_HEADER - 8] = {0}; /* the slot after its seq word */
    memcpy(fields + 0, &n, 8);
    memcpy(fields + 8, &rtype16, 2);
    memcpy(fields + 10, &self->flags, 1);
    memcpy(fields + 16, &cycle, 8);
    memcpy(fields + 24, &t_ns, 8);
    memcpy(fields + 32, PyByteArray_AS_STRING(self->trace_id), TRACE_ID_SIZE);
    memcpy(fields + 48, PyByteArray_AS_STRING(self->span_id), SPAN_ID_SIZE);

    char *base = (char *)PyMemoryView_GET_BUFFER(self->words)->buf;
    char *slot = base + self->slots + (Py_ssize_t)(n & self->mask) * self->record_size;
    uint64_t *seq = (uint64_t *)slot;
    __atomic_store_n(seq, 2 * n + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    memcpy(slot + 8, fields, sizeof fields);
    memcpy(slot + SLOT_HEADER, PyByteArray_AS_STRING(self->payload), self->payload_size);
    __atomic_store_n(seq, 2 * n + 2, __ATOMIC_RELEASE);
    self->next = n + 1;
    __atomic_store_n((uint64_t *)(base + self->head), n + 1, __ATOMIC_RELEASE);
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *
Writer_get_next(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong(self->next);
}

static PyObject *
Writer_get_flags(Writer *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->flags);
}

static int
Writer_set_flags(Writer *self, PyObject *value, void *Py_UNUSED(closure))
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "flags cannot be deleted");
        return -1;
    }
    long flags = PyLong_AsLong(value);
    if (flags == -1 && PyErr_Occurred())
        return -1;
    if (flags < 0 || flags > 0xFF) {
        PyErr_Format(PyExc_ValueError, "trace flags must fit a byte, not %ld", flags);
        return -1;
    }
    self->flags = (uint8_t)flags;
    return 0;
}

static PyMethodDef Writer_methods[] = {
    {"publish", (PyCFunction)(void (*)(void))Writer_publish, METH_FASTCALL,
     "publish(rtype, cycle, t_ns) -> index: one record from the staged payload and trace."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Writer_getset[] = {
    {"next", (getter)Writer_get_next, NULL, "Index the next record gets.", NULL},
    {"flags", (getter)Writer_get_flags, (setter)Writer_set_flags,
     "W3C trace flags stamped on the records that follow.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "mxrc.rt._ring_native.Writer",
    .tp_doc = "The ring's single producer (see mxrc.rt.ring.RingWriter).",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Writer_init,
    .tp_dealloc = (destructor)Writer_dealloc,
    .tp_methods = Writer_methods,
    .tp_getset = Writer_getset,
};

/* ---- reader ------------------------------------------------------------------------ */

static PyObject *
decode(PyTypeObject *record_type, const unsigned char *slot, Py_ssize_t payload_size)
{
    uint64_t index, cycle;
    uint16_t rtype;
    uint8_t flags;
    int64_t t_ns;
    memcpy(&index, slot + 8, 8);
    memcpy(&rtype, slot + 16, 2);
    memcpy(&flags, slot + 18, 1);
    memcpy(&cycle, slot + 24, 8);
    memcpy(&t_ns, slot + 32, 8);
    PyObject *items[RECORD_FIELDS] = {
        PyLong_FromUnsignedLongLong(index),
        PyLong_FromLong(rtype),
        PyLong_FromLong(flags),
        PyLong_FromUnsignedLongLong(cycle),
        PyLong_FromLongLong(t_ns),
        PyBytes_FromStringAndSize((const char *)slot + 40, TRACE_ID_SIZE),
        PyBytes_FromStringAndSize((const char *)slot + 56, SPAN_ID_SIZE),
        PyBytes_FromStringAndSize((const char *)slot + SLOT_HEADER, payload_size),
    };
    PyObject *record = NULL;
    for (int i = 0; i < RECORD_FIELDS; i++)
        if (items[i] == NULL)
            goto fail;
    /* What tuple.__new__(Record, row) does, minus the intermediate tuple. */
    record = record_type->tp_alloc(record_type, RECORD_FIELDS);
    if (record == NULL)
        goto fail;
    for (int i = 0; i < RECORD_FIELDS; i++)
        PyTuple_SET_ITEM(record, i, items[i]);
    /* Ints and bytes cannot form a cycle, so the collector has nothing to find here
     * (CPython untracks such tuples itself, but only once a collection has visited them,
     * and a poll of thousands of tracked records makes every collection walk them all). */
    PyObject_GC_UnTrack(record);
    return record;
fail:
    for (int i = 0; i < RECORD_FIELDS; i++)
        Py_XDECREF(items[i]);
    return NULL;
}

/* read_run(words, slots, record_size, capacity, payload_size, first, count, out,
 *          record_type) -> (ready, before, after)
 *
 * Appends records first, first+1, ... (contiguous slots) to out while each is complete
 * and stays so across its copy. Returns how many were appended and, when that is fewer
 * than count, the two sequence words of the slot that stopped it (both the first word
 * when the slot was not complete to begin with) for ring.classify_slot to judge. */
static PyObject *
read_run(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "read_run takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
    PyObject *words = args[0], *out = args[7], *record_type = args[8];
    if (!PyMemoryView_Check(words) || !PyList_Check(out) || !PyType_Check(record_type) ||
        !PyType_IsSubtype((PyTypeObject *)record_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError,
                        "read_run(words: memoryview, ..., out: list, record_type: tuple type)");
        return NULL;
    }
    Py_ssize_t slots = PyLong_AsSsize_t(args[1]);
    Py_ssize_t record_size = PyLong_AsSsize_t(args[2]);
    Py_ssize_t capacity = PyLong_AsSsize_t(args[3]);
    Py_ssize_t payload_size = PyLong_AsSsize_t(args[4]);
    uint64_t first = PyLong_AsUnsignedLongLong(args[5]);
    Py_ssize_t count = PyLong_AsSsize_t(args[6]);
    if (PyErr_Occurred())
        return NULL;
    if (check_view(words) < 0)
        return NULL;
    Py_buffer *view = PyMemoryView_GET_BUFFER(words);
    if (!geometry_fits(view, slots, capacity, record_size, payload_size))
        return NULL;
    if (count < 0 || count > capacity) {
        PyErr_Format(PyExc_ValueError, "count %zd is outside 0..%zd", count, capacity);
        return NULL;
    }
    const char *base = (const char *)view->buf;
    uint64_t mask = (uint64_t)capacity - 1;
    unsigned char copy[SLOT_HEADER + MAX_PAYLOAD];
    uint64_t before = 0, after = 0;
    Py_ssize_t ready;
    for (ready = 0; ready < count; ready++) {
        uint64_t n = first + (uint64_t)ready, want = 2 * n + 2;
        const char *slot = base + slots + (Py_ssize_t)(n & mask) * record_size;
        before = __atomic_load_n((const uint64_t *)slot, __ATOMIC_ACQUIRE);
        if (before != want) {
            after = before;
            break;
        }
        memcpy(copy, slot, SLOT_HEADER + payload_size);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        after = __atomic_load_n((const uint64_t *)slot, __ATOMIC_RELAXED);
        if (after != want)
            break;
        PyObject *record = decode((PyTypeObject *)record_type, copy, payload_size);
        if (record == NULL)
            return NULL;
        int appended = PyList_Append(out, record);
        Py_DECREF(record);
        if (appended < 0)
            return NULL;
    }
    return Py_BuildValue("(nKK)", ready, (unsigned long long)before, (unsigned long long)after);
}

static PyMethodDef module_methods[] = {
    {"read_run", (PyCFunction)(void (*)(void))read_run, METH_FASTCALL,
     "read_run(words, slots, record_size, capacity, payload_size, first, count, out, "
     "record_type) -> (ready, before, after)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "mxrc.rt._ring_native",
    .m_doc = "The ring's publish and read hot paths (the protocol is in mxrc.rt.ring).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__ring_native(void)
{
    if (PyType_Ready(&WriterType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&module_def);
    if (module == NULL)
        return NULL;
    Py_INCREF(&WriterType);
    if (PyModule_AddObject(module, "Writer", (PyObject *)&WriterType) < 0) {
        Py_DECREF(&WriterType);
        Py_DECREF(module);
        return NULL;
    }
    if (PyModule_AddStringConstant(module, "SOURCE_SHA256", MXRC_SOURCE_SHA256) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
