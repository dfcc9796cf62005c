/* lanner.sensors._fastproc: the process sensor's ring -> JSON loop in C (the fast path).
 *
 * One call (FastProc.handle) takes a batch of raw exec/clone/exit records as the ring gave them and does, per
 * record, what sensors/process_events.py does in Python: decode, resolve the parent in the process cache,
 * build the cached Process, render its Tetragon JSON once (kept on Process.encoded) and assemble the event
 * line. A clone (on_clone, no event) inserts the child's Process, its parent's details with its own identity,
 * as ProcessEvents._on_clone does. The process cache stays the Python one (lanner/process_cache.py): its
 * dicts are read and updated here (cache_insert, cache_exit: the tests compare the cache's state after both
 * paths), and its own _end() and _evict() are called for references and eviction. Every record this file
 * does not handle exactly as the Python code would (scripts, relative or unnormalised paths, truncated
 * filenames, duplicate execs, clones and exits, unknown parents of execs and clones, exits of unknown
 * processes, short records) goes to the Python path (`slow`), in order. The module's CLONE constant says it
 * takes the clone layout (fastproc.py refuses a module without it, as one without PB).
 *
 * With a pod resolver attached, the glue resolves the batch's distinct (netns inode, cgroup id) pairs once
 * (pod_keys, then the resolver in Python) and passes them to handle: a process in a pod gets its `pod` and
 * `docker` fields from the pair's preassembled parts (PodParts), a host process renders as before, and a
 * pair the glue marked (anything but None or a PodParts tuple) has its process's JSON rendered by the
 * Python encoder, once per process. Credentials and namespaces (--enable-process-cred/ns) come as JSON members
 * the glue renders once per distinct raw value (creds_ns: the memo's misses) and are spliced in here.
 *
 * With want_pb (a gRPC client follows) each event also gets its GetEventsResponse bytes (OutEvent.pb), as
 * exporter/grpc_api.py's ProtoEventEncoder builds them: the process's tetragon.Process bytes are rendered here
 * from the values its JSON is rendered from (render_process_pb, kept on Process.encoded_pb), with the
 * credentials', namespaces' and pod's protobuf pieces the glue adds to their JSON parts; a process without
 * them (rendered before, or by Python) gets them from the glue's proto_pb (ProtoEventEncoder.process_bytes).
 *
 * Record layouts are not defined here: the Python glue (sensors/fastproc.py) reads them from the object's
 * BTF (lanner/bpf/records.py) and passes each field's offset and size at init.
 * No compile at run time: `make fastpath` builds this file; without it the agent uses the Python path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#define F_TRUNC_ARGS (1u << 0)
#define F_TRUNC_FILENAME (1u << 1)
#define F_ERROR_CWD (1u << 3)
#define F_SCRIPT (1u << 5)
#define OP_EXEC 1
#define OP_CLONE 2
#define OP_EXIT 5
#define MEMO_MAX 1024     /* INTERN_MAX in sensors/process.py */
#define MEMO_KEY_MAX 256  /* INTERN_KEY_MAX */

typedef struct { Py_ssize_t off, size; } Field;

/* exec_event fields, in the order the glue passes them */
enum { X_KTIME, X_PID, X_TID, X_PPID, X_NSPID, X_PKTIME, X_FLAGS, X_CGROUP, X_INO, X_UID, X_AUID,
       X_FN_LEN, X_EXE_LEN, X_CWD_LEN, X_ARGS_LEN, X_NETNS, X_NFIELDS };
/* exit_event fields */
enum { T_KTIME, T_PID, T_EKTIME, T_CODE, T_NFIELDS };
/* clone_event fields (the decoder's CloneRecord order) */
enum { C_KTIME, C_PID, C_TID, C_NSPID, C_PPID, C_PKTIME, C_NFIELDS };
/* what a clone's child inherits from its parent (ProcessEvents._on_clone), by Process attribute */
enum { I_KEY, I_EID, I_BIN, I_ARGS, I_CWD, I_CREDS, I_NS, I_CG, I_EXE, I_INO, I_N };
static const char *const inherit_names[I_N] = {"key", "exec_id", "binary", "args", "cwd", "creds", "ns", "cgroup_id",
                                               "exe", "exe_ino"};

typedef struct { char *p; Py_ssize_t n, cap; } Buf;
/* handle's want_pb (exporter/pipeline.py PB_*): nothing, each event's protobuf and the batch's run, the run only */
enum { PB_NONE, PB_EVENTS, PB_RUN };

/* A slotted dataclass built without running its generated __init__: each field's slot offset comes from the
 * class's own member descriptors, and the fields past the positional ones take their dataclass defaults
 * (names and defaults from dataclasses.fields(), passed by the glue). */
/* the last raw value of one record field and what it decoded to: consecutive execs mostly repeat them */
typedef struct { char *raw; Py_ssize_t n, cap; PyObject *obj; } Last;
enum { L_FN, L_EXE, L_CWD, L_ARGS, L_CREDS, L_NS, L_COUNT };

#define CTOR_MAX 32
typedef struct {
    PyTypeObject *type;
    Py_ssize_t n, npos, off[CTOR_MAX];
    PyObject *defaults[CTOR_MAX];  /* for fields npos..n-1 */
} Ctor;

typedef struct {
    PyObject_HEAD
    Field x[X_NFIELDS], t[T_NFIELDS], c[C_NFIELDS];
    Py_ssize_t capacity;                 /* the cache's, read at each batch */
    Py_ssize_t x_tail, x_min, t_min, c_min, creds_off, creds_len, ns_off, ns_len;
    char node[256]; Py_ssize_t node_n;   /* the node name, UTF-8, for exec_ids */
    PyObject *node_json;                 /* bytes: the node name as a JSON string */
    Ctor process_ctor, event_ctor;
    Last last[L_COUNT];
    PyObject *process_type, *event_type, *cache, *entries, *by_pid, *events, *by_binary, *encoder;
    PyObject *slow, *creds_ns, *signals;  /* slow(raw) -> [OutEvent]; creds_ns(raw) -> (CredsEntry, NsEntry) */
    PyObject *proto_pb;  /* proto_pb(process) -> its tetragon.Process bytes (ProtoEventEncoder.process_bytes) */
    PyObject *node_pb;   /* bytes: GetEventsResponse.node_name (field 1000) */
    int want_pb;         /* during handle: PB_NONE, PB_EVENTS (OutEvent.pb and the run) or PB_RUN (the run only) */
    PyObject *memo_cred, *memo_ns, *memo_text, *memo_args, *memo_int;
    PyObject *flag_tuples[16];           /* by (clone, truncArgs, rootcwd, errorCWD) bits */
    PyObject *clone_flags;               /* ("clone",): a clone's child until it execs */
    PyObject *a_inherit[I_N];            /* inherit_names, interned */
    PyObject *s_exec, *s_exit, *s_execve, *s_clone, *s_empty, *empty_tuple;
    PyObject *a_pid, *a_refcnt, *a_end, *a_evict, *a_key, *a_encoded, *a_alive, *a_parent_key, *a_binary, *a_flags, *a_exec_id, *a_insert, *a_exit, *a_pjson;
    PyObject *a_pod, *a_container, *a_encoded_pb, *a_pb;
    PyObject *pods;  /* during handle: (netns, cgroup id) -> pod entry (PodParts), None without a resolver */
    long long last_sec; char sec_text[32];
    PyObject *run_kind, *run_bin; long long run_n;  /* events counted but not yet in the counters' dicts */
    Buf buf, obj, pbo, pbe;  /* the line, the process JSON, the process protobuf, the event protobuf */
    Buf grun; Py_ssize_t grun_count;  /* with want_pb: the batch's pb bytes as gRPC messages (take_run) */
} FastProc;

/* ------------------------------------------------------------------ small helpers */
static int buf_grow(Buf *b, Py_ssize_t more) {
    if (b->n + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->n + more) cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (!p) { PyErr_NoMemory(); return -1; }
    b->p = p; b->cap = cap;
    return 0;
}
static int put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_grow(b, n)) return -1;
    memcpy(b->p + b->n, s, n); b->n += n;
    return 0;
}
#define PUTS(b, lit) put((b), (lit), (Py_ssize_t)sizeof(lit) - 1)
static int put_u64(Buf *b, unsigned long long v) {
    char tmp[24]; int n = 0;
    do { tmp[23 - n++] = (char)('0' + v % 10); v /= 10; } while (v);
    return put(b, tmp + 24 - n, n);
}
/* protobuf wire format (exporter/api/wire.py): varints, tags, length-delimited fields */
static int varint_len(unsigned long long v) {
    int n = 1;
    while (v > 0x7F) { v >>= 7; n++; }
    return n;
}
static int put_varint(Buf *b, unsigned long long v) {
    char tmp[10]; int n = 0;
    while (v > 0x7F) { tmp[n++] = (char)((v & 0x7F) | 0x80); v >>= 7; }
    tmp[n++] = (char)v;
    return put(b, tmp, n);
}
/* the size of a length-delimited field of n payload bytes */
static Py_ssize_t ld_size(unsigned field, Py_ssize_t n) {
    return varint_len(field << 3 | 2) + varint_len((unsigned long long)n) + n;
}
static int put_ld_head(Buf *b, unsigned field, Py_ssize_t n) {
    return put_varint(b, field << 3 | 2) || put_varint(b, (unsigned long long)n);
}
static int put_ld(Buf *b, unsigned field, const char *p, Py_ssize_t n) {
    return put_ld_head(b, field, n) || put(b, p, n);
}
static int put_ld_bytes(Buf *b, unsigned field, PyObject *o) {
    return put_ld(b, field, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o));
}
static int put_bytes(Buf *b, PyObject *o) { return put(b, PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o)); }
/* a proto3 string field: left out when empty */
static int put_str_field(Buf *b, unsigned field, PyObject *u) {
    Py_ssize_t n; const char *p = PyUnicode_AsUTF8AndSize(u, &n);
    return !p ? -1 : n ? put_ld(b, field, p, n) : 0;
}
/* a google.protobuf.UInt32Value field: always there, its value left out when 0 */
static int put_u32_wrapper(Buf *b, unsigned field, unsigned long long v) {
    if (put_varint(b, field << 3 | 2)) return -1;
    if (!v) return put_varint(b, 0);
    return put_varint(b, 1 + varint_len(v)) || put_varint(b, 0x08) || put_varint(b, v);
}
/* google.protobuf.Timestamp's fields for a wall time (seconds, nanos; each left out when 0) into tmp */
static int timestamp_pb(long long wall, char *tmp) {
    long long sec = wall / 1000000000LL, ns = wall % 1000000000LL;
    if (ns < 0) { ns += 1000000000LL; sec -= 1; }
    Buf t = {tmp, 0, 32};
    if (sec && (put_varint(&t, 0x08) || put_varint(&t, (unsigned long long)sec))) return -1;
    if (ns && (put_varint(&t, 0x10) || put_varint(&t, (unsigned long long)ns))) return -1;
    return (int)t.n;
}
/* a JSON string as orjson writes it: ", \ and control characters escaped, everything else as UTF-8 */
static int put_json_utf8(Buf *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_grow(b, n * 6 + 2)) return -1;
    char *o = b->p + b->n;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') { *o++ = (char)c; continue; }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\b': *o++ = 'b'; break;
        case '\t': *o++ = 't'; break;
        case '\n': *o++ = 'n'; break;
        case '\f': *o++ = 'f'; break;
        case '\r': *o++ = 'r'; break;
        default: *o++ = 'u'; *o++ = '0'; *o++ = '0'; *o++ = hex[c >> 4]; *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->n = o - b->p;
    return 0;
}
static int put_json_str(Buf *b, PyObject *u) {
    Py_ssize_t n; const char *s = PyUnicode_AsUTF8AndSize(u, &n);
    return s ? put_json_utf8(b, s, n) : -1;
}
static unsigned long long rd(const unsigned char *p, Field f) {
    switch (f.size) {
    case 1: return p[f.off];
    case 2: { uint16_t v; memcpy(&v, p + f.off, 2); return v; }
    case 4: { uint32_t v; memcpy(&v, p + f.off, 4); return v; }
    default: { uint64_t v; memcpy(&v, p + f.off, 8); return v; }
    }
}
/* KtimeClock.rfc3339: "%Y-%m-%dT%H:%M:%S" of the UTC second, then ".%09dZ" */
static int put_time(FastProc *s, Buf *b, long long wall) {
    long long sec = wall / 1000000000LL, ns = wall % 1000000000LL;
    if (ns < 0) { ns += 1000000000LL; sec -= 1; }
    if (sec != s->last_sec) {
        time_t t = (time_t)sec; struct tm tm;
        if (!gmtime_r(&t, &tm) || !strftime(s->sec_text, sizeof s->sec_text, "%Y-%m-%dT%H:%M:%S", &tm)) {
            PyErr_SetString(PyExc_ValueError, "time out of range"); return -1;
        }
        s->last_sec = sec;
    }
    char tail[11];
    tail[0] = '.'; tail[10] = 'Z';
    for (int i = 9; i >= 1; i--) { tail[i] = (char)('0' + ns % 10); ns /= 10; }
    return put(b, s->sec_text, (Py_ssize_t)strlen(s->sec_text)) || put(b, tail, 11);
}
/* make_exec_id: base64("node:ktime:pid") */
static PyObject *exec_id(FastProc *s, unsigned long long ktime, unsigned long long pid) {
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char in[320]; char out[432];
    int n = (int)s->node_n;  /* "node:ktime:pid" (node is under 256 bytes, checked at init) */
    memcpy(in, s->node, n);
    for (int k = 0; k < 2; k++) {
        unsigned long long v = k ? pid : ktime;
        char d[20]; int nd = 0;
        do { d[nd++] = (char)('0' + v % 10); v /= 10; } while (v);
        in[n++] = ':';
        while (nd) in[n++] = (unsigned char)d[--nd];
    }
    int o = 0;
    for (int i = 0; i < n; i += 3) {
        unsigned v = in[i] << 16 | (i + 1 < n ? in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = b64[v >> 18 & 63]; out[o++] = b64[v >> 12 & 63];
        out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? b64[v & 63] : '=';
    }
    return PyUnicode_DecodeASCII(out, o, NULL);
}
/* memo[key] (new reference) or NULL without an error when absent */
static PyObject *memo_get(PyObject *memo, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(memo, key);
    Py_XINCREF(v);
    return v;
}
static int memo_put(PyObject *memo, PyObject *key, PyObject *v) {
    if (PyDict_GET_SIZE(memo) >= MEMO_MAX) PyDict_Clear(memo);
    return PyDict_SetItem(memo, key, v);
}
/* spec: (names of every field in order, defaults of the fields after the npos first) */
static int ctor_init(Ctor *c, PyObject *type, PyObject *spec, Py_ssize_t npos) {
    PyObject *names, *defaults;
    if (!PyType_Check(type) || !PyArg_ParseTuple(spec, "O!O!", &PyTuple_Type, &names, &PyTuple_Type, &defaults))
        return PyErr_Occurred() ? -1 : (PyErr_SetString(PyExc_TypeError, "a class expected"), -1);
    Py_ssize_t n = PyTuple_GET_SIZE(names);
    if (n > CTOR_MAX || n < npos || PyTuple_GET_SIZE(defaults) != n - npos) {
        PyErr_Format(PyExc_ValueError, "%s: %zd fields, %zd defaults for %zd positional", ((PyTypeObject *)type)->tp_name,
                     n, PyTuple_GET_SIZE(defaults), npos);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *d = PyObject_GetAttr(type, PyTuple_GET_ITEM(names, i));
        int ok = d && Py_IS_TYPE(d, &PyMemberDescr_Type) && ((PyMemberDescrObject *)d)->d_member->type == T_OBJECT_EX;
        if (ok) c->off[i] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_XDECREF(d);
        if (!ok) {
            PyErr_Format(PyExc_TypeError, "%s.%U is not an object slot", ((PyTypeObject *)type)->tp_name,
                         PyTuple_GET_ITEM(names, i));
            return -1;
        }
    }
    for (Py_ssize_t i = npos; i < n; i++) c->defaults[i] = Py_NewRef(PyTuple_GET_ITEM(defaults, i - npos));
    c->type = (PyTypeObject *)Py_NewRef(type);
    c->n = n; c->npos = npos;
    return 0;
}
static void ctor_clear(Ctor *c) {
    for (Py_ssize_t i = c->npos; i < c->n; i++) Py_CLEAR(c->defaults[i]);
    Py_CLEAR(c->type);
    c->n = c->npos = 0;
}
/* a new instance from exactly npos positional values (borrowed) */
static PyObject *ctor_new(Ctor *c, PyObject *const *args) {
    PyObject *o = c->type->tp_alloc(c->type, 0);
    if (!o) return NULL;
    for (Py_ssize_t i = 0; i < c->n; i++)
        *(PyObject **)((char *)o + c->off[i]) = Py_NewRef(i < c->npos ? args[i] : c->defaults[i]);
    return o;
}
static PyObject *last_hit(Last *l, const char *p, Py_ssize_t n) {
    return l->obj && l->n == n && !memcmp(l->raw, p, n) ? Py_NewRef(l->obj) : NULL;
}
static void last_keep(Last *l, const char *p, Py_ssize_t n, PyObject *obj) {
    if (n > MEMO_KEY_MAX) return;
    if (n > l->cap) {
        char *r = PyMem_Realloc(l->raw, MEMO_KEY_MAX);
        if (!r) return;  /* only a cache: nothing kept */
        l->raw = r; l->cap = MEMO_KEY_MAX;
    }
    memcpy(l->raw, p, n); l->n = n;
    Py_XSETREF(l->obj, Py_NewRef(obj));
}
static void last_clear(Last *l) {
    PyMem_Free(l->raw);
    l->raw = NULL; l->n = l->cap = 0;
    Py_CLEAR(l->obj);
}
/* a path or cwd as the decoder gives it (UTF-8, backslashreplace), one object per distinct short value */
static PyObject *text(FastProc *s, Last *l, const char *p, Py_ssize_t n) {
    PyObject *u = last_hit(l, p, n);
    if (u) return u;
    u = PyUnicode_DecodeUTF8(p, n, "backslashreplace");
    if (!u || n > MEMO_KEY_MAX) return u;
    PyObject *have = memo_get(s->memo_text, u);
    if (have) { Py_DECREF(u); last_keep(l, p, n, have); return have; }
    if (PyErr_Occurred() || memo_put(s->memo_text, u, u)) { Py_DECREF(u); return NULL; }
    last_keep(l, p, n, u);
    return u;
}
/* an int that repeats from exec to exec (cgroup ids, inodes): one object per distinct value */
static PyObject *shared_int(FastProc *s, unsigned long long v) {
    PyObject *u = PyLong_FromUnsignedLongLong(v);
    if (!u || v < 256) return u;
    PyObject *have = memo_get(s->memo_int, u);
    if (have) { Py_DECREF(u); return have; }
    if (PyErr_Occurred() || memo_put(s->memo_int, u, u)) { Py_DECREF(u); return NULL; }
    return u;
}
/* key -> value of a cache dict, borrowed, NULL if absent (or on error, with the error set) */
static PyObject *cache_current(FastProc *s, PyObject *pid) {
    PyObject *key = PyDict_GetItemWithError(s->by_pid, pid);
    return key ? PyDict_GetItemWithError(s->entries, key) : NULL;
}
/* d[key] += n (from 0) */
static int add_n(PyObject *d, PyObject *key, long long n) {
    PyObject *old = PyDict_GetItemWithError(d, key);
    if (!old && PyErr_Occurred()) return -1;
    long long v = old ? PyLong_AsLongLong(old) : 0;
    if (v == -1 && PyErr_Occurred()) return -1;
    PyObject *nv = PyLong_FromLongLong(v + n);
    int rc = nv ? PyDict_SetItem(d, key, nv) : -1;
    Py_XDECREF(nv);
    return rc;
}
/* the pending run of events of one kind and binary into ProcessEvents' counters (events, by_binary) */
static int count_flush(FastProc *s) {
    if (!s->run_n) return 0;
    PyObject *k = PyTuple_Pack(2, s->run_kind, s->run_bin);
    int rc = k ? add_n(s->by_binary, k, s->run_n) || add_n(s->events, s->run_kind, s->run_n) : -1;
    Py_XDECREF(k);
    s->run_n = 0;
    Py_CLEAR(s->run_kind); Py_CLEAR(s->run_bin);
    return rc;
}
/* ProcessEvents._count, counted as runs of one (kind, binary): flushed when it changes and after each batch */
static int count(FastProc *s, PyObject *kind, PyObject *binary) {
    if (s->run_n && kind == s->run_kind && binary == s->run_bin) { s->run_n++; return 0; }
    if (count_flush(s)) return -1;
    s->run_kind = Py_NewRef(kind); s->run_bin = Py_NewRef(binary); s->run_n = 1;
    return 0;
}
/* a process's memoised JSON (new reference): Process.encoded, else the Python encoder renders it */
static PyObject *process_json(FastProc *s, PyObject *proc) {
    PyObject *j = PyObject_GetAttr(proc, s->a_encoded);
    if (j && j != Py_None && PyBytes_Check(j)) return j;
    Py_XDECREF(j);
    return j ? PyObject_CallMethodOneArg(s->encoder, s->a_pjson, proc) : NULL;
}
/* one gRPC message onto the batch's run: a 0 byte (uncompressed), the big-endian length, the bytes */
static int run_add(FastProc *s, const char *p, Py_ssize_t len) {
    if (len > 0xffffffffLL) return 0;
    Buf *b = &s->grun;
    if (buf_grow(b, 5 + len)) return -1;
    char *o = b->p + b->n;
    o[0] = 0; o[1] = (char)(len >> 24); o[2] = (char)(len >> 16); o[3] = (char)(len >> 8); o[4] = (char)len;
    memcpy(o + 5, p, len);
    b->n += 5 + len;
    s->grun_count++;
    return 0;
}
/* the event protobuf just built in s->pbe: onto the batch's run, and as OutEvent.pb's bytes (*pb, a new reference)
 * unless only the run is wanted (PB_RUN: *pb stays NULL); 0, or -1 on error */
static int pb_out(FastProc *s, PyObject **pb) {
    *pb = NULL;
    if (run_add(s, s->pbe.p, s->pbe.n)) return -1;
    return s->want_pb == PB_EVENTS && !(*pb = PyBytes_FromStringAndSize(s->pbe.p, s->pbe.n)) ? -1 : 0;
}
/* the OutEvent of a line in b, with its protobuf (pb: a new reference, NULL when not wanted) */
static PyObject *emit(FastProc *s, PyObject *kind, PyObject *proc, PyObject *parent, Buf *b, PyObject *pb) {
    PyObject *line = PyBytes_FromStringAndSize(b->p, b->n);
    if (!line) { Py_XDECREF(pb); return NULL; }
    PyObject *args[4] = {kind, proc, parent, line};
    PyObject *ev = ctor_new(&s->event_ctor, args);
    Py_DECREF(line);
    if (ev && pb && PyObject_SetAttr(ev, s->a_pb, pb)) Py_CLEAR(ev);
    Py_XDECREF(pb);
    return ev;
}

/* ------------------------------------------------------------------ the process cache */
/* ProcessCache.insert of a new identity whose parent is known: the common case in C (the two dicts, the parent's
 * reference); the rest stays the cache's own code: ending the pid's previous live identity (_end), eviction */
static int cache_insert(FastProc *s, PyObject *proc, PyObject *key, PyObject *pid, PyObject *parent, PyObject *now) {
    PyObject *prev_key = PyDict_GetItemWithError(s->by_pid, pid), *prev = NULL;
    if (!prev_key && PyErr_Occurred()) return -1;
    if (prev_key) {
        Py_INCREF(prev_key);
        int same = PyObject_RichCompareBool(prev_key, key, Py_EQ);
        prev = same == 0 ? PyDict_GetItemWithError(s->entries, prev_key) : NULL;
        Py_DECREF(prev_key);
        if (same < 0 || (!prev && PyErr_Occurred())) return -1;
    }
    if (prev) {
        PyObject *alive = PyObject_GetAttr(prev, s->a_alive);
        int is = alive ? PyObject_IsTrue(alive) : -1;
        Py_XDECREF(alive);
        if (is < 0) return -1;
        if (is) {
            PyObject *args[3] = {s->cache, prev, now};
            PyObject *r = PyObject_VectorcallMethod(s->a_end, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            if (!r) return -1;
            Py_DECREF(r);
        }
    }
    if (PyDict_SetItem(s->entries, key, proc) || PyDict_SetItem(s->by_pid, pid, key)) return -1;
    PyObject *rc = PyObject_GetAttr(parent, s->a_refcnt);
    long long n = rc ? PyLong_AsLongLong(rc) : -1;
    Py_XDECREF(rc);
    if (n == -1 && PyErr_Occurred()) return -1;
    PyObject *nv = PyLong_FromLongLong(n + 1);
    int bad = !nv || PyObject_SetAttr(parent, s->a_refcnt, nv);
    Py_XDECREF(nv);
    if (bad) return -1;
    if (PyDict_GET_SIZE(s->entries) > s->capacity) {
        PyObject *args[2] = {s->cache, now};
        PyObject *r = PyObject_VectorcallMethod(s->a_evict, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
        if (!r) return -1;
        Py_DECREF(r);
    }
    return 0;
}
/* ProcessCache.exit of a live process: the cache's own _end, then the pid forgets it if it is still its own */
static int cache_exit(FastProc *s, PyObject *proc, PyObject *now) {
    PyObject *args[3] = {s->cache, proc, now};
    PyObject *r = PyObject_VectorcallMethod(s->a_end, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
    if (!r) return -1;
    Py_DECREF(r);
    PyObject *pid = PyObject_GetAttr(proc, s->a_pid), *key = pid ? PyObject_GetAttr(proc, s->a_key) : NULL;
    PyObject *cur = key ? PyDict_GetItemWithError(s->by_pid, pid) : NULL;
    int rc = key && (cur || !PyErr_Occurred()) ? 0 : -1;
    if (cur) {
        int same = PyObject_RichCompareBool(cur, key, Py_EQ);
        rc = same < 0 ? -1 : same ? PyDict_DelItem(s->by_pid, pid) : 0;
    }
    Py_XDECREF(pid); Py_XDECREF(key);
    return rc;
}

/* ------------------------------------------------------------------ exec */
/* (arguments tuple, JSON string of join_arguments or b"", join_arguments in UTF-8) for an argv's raw
 * NUL-separated bytes */
static PyObject *make_args(const char *p, Py_ssize_t n) {
    if (n && p[n - 1] == '\0') n--;
    const char *end = p + n, *a = n ? memchr(p, '\0', n) : NULL;
    PyObject *list = PyList_New(0);
    if (!list) return NULL;
    Buf joined = {0};
    int fail = 0;
    for (const char *q = a ? a + 1 : end; a && !fail; q = a + 1) {  /* argv[1:] */
        a = memchr(q, '\0', end - q);
        const char *e = a ? a : end;
        PyObject *u = PyUnicode_DecodeUTF8(q, e - q, "backslashreplace");
        Py_ssize_t un; const char *us = u ? PyUnicode_AsUTF8AndSize(u, &un) : NULL;
        fail = !us || (PyList_GET_SIZE(list) && PUTS(&joined, " ")) || PyList_Append(list, u);
        if (!fail) {
            int quote = memchr(us, ' ', un) != NULL;  /* Tetragon quotes an argument that holds a space */
            fail = (quote && PUTS(&joined, "\"")) || put(&joined, us, un) || (quote && PUTS(&joined, "\""));
        }
        Py_XDECREF(u);
        if (!a) break;
    }
    PyObject *res = NULL;
    if (!fail) {
        Buf js = {0};
        if (joined.n == 0 || !put_json_utf8(&js, joined.p, joined.n)) {
            PyObject *t = PyList_AsTuple(list), *j = PyBytes_FromStringAndSize(js.p ? js.p : "", js.n);
            PyObject *u = PyBytes_FromStringAndSize(joined.p ? joined.p : "", joined.n);
            if (t && j && u) res = PyTuple_Pack(3, t, j, u);
            Py_XDECREF(t); Py_XDECREF(j); Py_XDECREF(u);
        }
        PyMem_Free(js.p);
    }
    PyMem_Free(joined.p);
    Py_DECREF(list);
    return res;
}
static PyObject *args_entry(FastProc *s, const char *p, Py_ssize_t n) {
    if (n > MEMO_KEY_MAX) return make_args(p, n);
    PyObject *v = last_hit(&s->last[L_ARGS], p, n);
    if (v) return v;
    PyObject *key = PyBytes_FromStringAndSize(p, n);
    if (!key) return NULL;
    v = memo_get(s->memo_args, key);
    if (!v && !PyErr_Occurred() && (v = make_args(p, n)) && memo_put(s->memo_args, key, v)) Py_CLEAR(v);
    Py_DECREF(key);
    if (v) last_keep(&s->last[L_ARGS], p, n, v);
    return v;
}
/* what the glue's creds_ns gives for one exec: (CredsEntry, NsEntry), CredsEntry (Creds, ',"cap":{..}' or b"",
 * ',"process_credentials":{..}' or b"", the cap and process_credentials fields' protobuf bytes or b""),
 * NsEntry (Namespaces, ',"ns":{..}' or b"", the ns field's protobuf bytes or b""): the shared objects and
 * their JSON and protobuf as the encoder's options render them */
static int all_bytes(PyObject *t, Py_ssize_t from) {
    for (Py_ssize_t i = from; i < PyTuple_GET_SIZE(t); i++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(t, i))) return 0;
    return 1;
}
static int creds_ns_ok(PyObject *pair) {
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) return 0;
    PyObject *c = PyTuple_GET_ITEM(pair, 0), *n = PyTuple_GET_ITEM(pair, 1);
    return PyTuple_Check(c) && PyTuple_GET_SIZE(c) == 5 && all_bytes(c, 1) && PyTuple_Check(n) &&
           PyTuple_GET_SIZE(n) == 3 && all_bytes(n, 1);
}
/* the exec's shared CredsEntry and NsEntry (new references in *c, *ns) */
static int creds_ns(FastProc *s, PyObject *raw, PyObject **c, PyObject **ns) {
    const char *p = PyBytes_AS_STRING(raw);
    if ((*c = last_hit(&s->last[L_CREDS], p + s->creds_off, s->creds_len))) {
        if ((*ns = last_hit(&s->last[L_NS], p + s->ns_off, s->ns_len))) return 0;
        Py_CLEAR(*c);
    }
    PyObject *ck = PyBytes_FromStringAndSize(p + s->creds_off, s->creds_len);
    PyObject *nk = PyBytes_FromStringAndSize(p + s->ns_off, s->ns_len);
    int rc = -1;
    if (ck && nk) {
        *c = memo_get(s->memo_cred, ck);
        *ns = *c ? memo_get(s->memo_ns, nk) : NULL;
        if (*c && *ns) rc = 0;
        else if (!PyErr_Occurred()) {
            Py_CLEAR(*c); Py_CLEAR(*ns);
            PyObject *pair = PyObject_CallOneArg(s->creds_ns, raw);  /* the decoder's own classes */
            if (pair && creds_ns_ok(pair)) {
                *c = Py_NewRef(PyTuple_GET_ITEM(pair, 0)); *ns = Py_NewRef(PyTuple_GET_ITEM(pair, 1));
                rc = (memo_put(s->memo_cred, ck, *c) || memo_put(s->memo_ns, nk, *ns)) ? -1 : 0;
            } else if (pair) PyErr_SetString(PyExc_TypeError, "creds_ns must return ((creds, cap, pc, cap_pb, pc_pb), "
                                                              "(ns, ns_json, ns_pb))");
            Py_XDECREF(pair);
        }
    }
    Py_XDECREF(ck); Py_XDECREF(nk);
    if (rc) { Py_CLEAR(*c); Py_CLEAR(*ns); return rc; }
    last_keep(&s->last[L_CREDS], p + s->creds_off, s->creds_len, *c);
    last_keep(&s->last[L_NS], p + s->ns_off, s->ns_len, *ns);
    return 0;
}
/* PodParts (ProcessEventEncoder.pod_parts, then the glue's ProtoPieces.pod): (head, tail, docker, pod dict,
 * pb head, pb container or None, pb tail, pb docker), the pod's JSON split where the container's pid goes
 * (tail b"": no container, no pid), docker the "docker" value's JSON or b""; then the Pod message's fields
 * before the container, the container's fields without its pid (None: no container), the fields after it,
 * and the Process's docker field or b"" */
static int pod_parts_ok(PyObject *e) {
    if (!PyTuple_Check(e) || PyTuple_GET_SIZE(e) != 8) return 0;
    PyObject *pc = PyTuple_GET_ITEM(e, 5);
    return PyBytes_Check(PyTuple_GET_ITEM(e, 0)) && PyBytes_Check(PyTuple_GET_ITEM(e, 1)) &&
           PyBytes_Check(PyTuple_GET_ITEM(e, 2)) && PyDict_Check(PyTuple_GET_ITEM(e, 3)) &&
           PyBytes_Check(PyTuple_GET_ITEM(e, 4)) && (pc == Py_None || PyBytes_Check(pc)) &&
           PyBytes_Check(PyTuple_GET_ITEM(e, 6)) && PyBytes_Check(PyTuple_GET_ITEM(e, 7)) &&
           (pc == Py_None) == (PyBytes_GET_SIZE(PyTuple_GET_ITEM(e, 1)) == 0);
}
/* the container's pid in pod_dict: the nspid when it differs from the pid (and is known) */
static int pod_pid(unsigned long long pid, unsigned long long nspid) { return nspid && nspid != pid; }
/* ,"pod":{...}[,"docker":"..."] as process_dict writes them */
static int render_pod(Buf *b, PyObject *parts, unsigned long long pid, unsigned long long nspid) {
    PyObject *head = PyTuple_GET_ITEM(parts, 0), *tail = PyTuple_GET_ITEM(parts, 1), *dk = PyTuple_GET_ITEM(parts, 2);
    if (PUTS(b, ",\"pod\":") || put(b, PyBytes_AS_STRING(head), PyBytes_GET_SIZE(head))) return -1;
    if (PyBytes_GET_SIZE(tail) && pod_pid(pid, nspid) && (PUTS(b, ",\"pid\":") || put_u64(b, nspid))) return -1;
    if (put(b, PyBytes_AS_STRING(tail), PyBytes_GET_SIZE(tail))) return -1;
    return PyBytes_GET_SIZE(dk) && (PUTS(b, ",\"docker\":") || put(b, PyBytes_AS_STRING(dk), PyBytes_GET_SIZE(dk)));
}
/* Process.pod as the encoder sets it: the pod dict, its container's pid added (a copy of the container) */
static PyObject *pod_object(FastProc *s, PyObject *parts, unsigned long long pid, unsigned long long nspid) {
    PyObject *d = PyDict_Copy(PyTuple_GET_ITEM(parts, 3));
    if (!d || !PyBytes_GET_SIZE(PyTuple_GET_ITEM(parts, 1)) || !pod_pid(pid, nspid)) return d;
    PyObject *c = PyDict_GetItemWithError(d, s->a_container);
    PyObject *cc = c && PyDict_Check(c) ? PyDict_Copy(c) : NULL, *n = cc ? PyLong_FromUnsignedLongLong(nspid) : NULL;
    if (!cc && !PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "pod parts: a container dict expected");
    int bad = !n || PyDict_SetItem(cc, s->a_pid, n) || PyDict_SetItem(d, s->a_container, cc);
    Py_XDECREF(cc); Py_XDECREF(n);
    if (bad) Py_CLEAR(d);
    return d;
}
/* the process object's JSON (Tetragon field order, as ProcessEventEncoder.process_dict) into s->obj */
static int render_process(FastProc *s, PyObject *eid, unsigned long long pid, unsigned long long uid,
                          PyObject *cwd, PyObject *binary, PyObject *args_json, unsigned bits, long long wall,
                          unsigned long long auid, PyObject *pod, unsigned long long nspid, PyObject *parent_eid,
                          PyObject *cred_e, PyObject *ns_e, unsigned long long tid, PyObject *exe,
                          unsigned long long ino) {
    PyObject *cap = PyTuple_GET_ITEM(cred_e, 1), *pc = PyTuple_GET_ITEM(cred_e, 2), *nsj = PyTuple_GET_ITEM(ns_e, 1);
    static const char *const flag_json[16] = {
        "execve", "execve clone", "execve truncArgs", "execve truncArgs clone", "execve rootcwd",
        "execve rootcwd clone", "execve truncArgs rootcwd", "execve truncArgs rootcwd clone", "execve errorCWD",
        "execve errorCWD clone", "execve truncArgs errorCWD", "execve truncArgs errorCWD clone", "", "", "", ""};
    Buf *b = &s->obj;
    b->n = 0;
    if (PUTS(b, "{\"exec_id\":") || put_json_str(b, eid) || PUTS(b, ",\"pid\":") || put_u64(b, pid) ||
        PUTS(b, ",\"uid\":") || put_u64(b, uid) || PUTS(b, ",\"cwd\":") || put_json_str(b, cwd) ||
        PUTS(b, ",\"binary\":") || put_json_str(b, binary))
        return -1;
    if (PyBytes_GET_SIZE(args_json) &&
        (PUTS(b, ",\"arguments\":") || put(b, PyBytes_AS_STRING(args_json), PyBytes_GET_SIZE(args_json))))
        return -1;
    if (PUTS(b, ",\"flags\":\"") || put(b, flag_json[bits], (Py_ssize_t)strlen(flag_json[bits])) ||
        PUTS(b, "\",\"start_time\":\"") || put_time(s, b, wall) || PUTS(b, "\",\"auid\":") || put_u64(b, auid))
        return -1;
    if (pod && render_pod(b, pod, pid, nspid))
        return -1;
    if (PyUnicode_GET_LENGTH(parent_eid) && (PUTS(b, ",\"parent_exec_id\":") || put_json_str(b, parent_eid)))
        return -1;
    if (put(b, PyBytes_AS_STRING(cap), PyBytes_GET_SIZE(cap)) || put(b, PyBytes_AS_STRING(nsj), PyBytes_GET_SIZE(nsj)) ||
        PUTS(b, ",\"tid\":") || put_u64(b, tid) || put(b, PyBytes_AS_STRING(pc), PyBytes_GET_SIZE(pc)))
        return -1;
    if (PyUnicode_GET_LENGTH(exe)) {
        if (PUTS(b, ",\"binary_properties\":{\"file\":{\"path\":") || put_json_str(b, exe))
            return -1;
        if (ino && (PUTS(b, ",\"inode\":{\"number\":\"") || put_u64(b, ino) || PUTS(b, "\"}")))
            return -1;
        if (PUTS(b, "}}"))
            return -1;
    }
    return PUTS(b, "}");
}
/* binary: a complete absolute filename with no "/." or "//" is what the Python path keeps as is */
static int plain_abs(const unsigned char *fn, Py_ssize_t n) {
    if (n == 0 || fn[0] != '/') return 0;
    for (Py_ssize_t i = 0; i + 1 < n; i++)
        if (fn[i] == '/' && (fn[i + 1] == '.' || fn[i + 1] == '/')) return 0;
    return 1;
}
/* an exec record's fields (pointers into the record) */
typedef struct {
    const unsigned char *fn, *exe, *cwd, *argv;
    Py_ssize_t fn_n, exe_n, cwd_n, args_n;
    unsigned long long ktime, pkt, pid, ppid, tid, nspid, uid, auid, cgroup, ino, netns;
    unsigned flags;
} ExecView;

/* 1 with *v filled, 0 when the Python path takes the record (short, script, truncated, relative or
 * unnormalised filename) */
static int exec_view(FastProc *s, PyObject *raw, ExecView *v) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (n < s->x_min) return 0;
    v->flags = (unsigned)rd(p, s->x[X_FLAGS]);
    v->fn_n = rd(p, s->x[X_FN_LEN]); v->exe_n = rd(p, s->x[X_EXE_LEN]);
    v->cwd_n = rd(p, s->x[X_CWD_LEN]); v->args_n = rd(p, s->x[X_ARGS_LEN]);
    v->fn = p + s->x_tail; v->exe = v->fn + v->fn_n; v->cwd = v->exe + v->exe_n; v->argv = v->cwd + v->cwd_n;
    if (v->flags & (F_SCRIPT | F_TRUNC_FILENAME) || s->x_tail + v->fn_n + v->exe_n + v->cwd_n + v->args_n > n ||
        !plain_abs(v->fn, v->fn_n))
        return 0;
    v->ktime = rd(p, s->x[X_KTIME]); v->pkt = rd(p, s->x[X_PKTIME]); v->pid = rd(p, s->x[X_PID]);
    v->ppid = rd(p, s->x[X_PPID]); v->tid = rd(p, s->x[X_TID]); v->nspid = rd(p, s->x[X_NSPID]);
    v->uid = rd(p, s->x[X_UID]); v->auid = rd(p, s->x[X_AUID]); v->cgroup = rd(p, s->x[X_CGROUP]);
    v->ino = rd(p, s->x[X_INO]); v->netns = rd(p, s->x[X_NETNS]);
    return 1;
}
/* the parent ProcessCache.resolve(ppid, pkt) gives (new reference); NULL without an error when it would miss
 * (the Python path then counts the miss) */
static PyObject *cache_resolve(FastProc *s, PyObject *ppid, unsigned long long pkt) {
    PyObject *parent = NULL;
    if (pkt) {
        PyObject *pk = PyLong_FromUnsignedLongLong(pkt), *key = pk ? PyTuple_Pack(2, ppid, pk) : NULL;
        Py_XDECREF(pk);
        if (!key) return NULL;
        parent = PyDict_GetItemWithError(s->entries, key);
        Py_DECREF(key);
    }
    if (!parent && !PyErr_Occurred()) parent = cache_current(s, ppid);
    return Py_XNewRef(parent);
}
/* the index of the exec's flags in flag_tuples and render_process's table, -1 on error */
static int exec_bits(FastProc *s, const ExecView *v, PyObject *prev) {
    int bits = 0;
    if (prev) {  /* a clone's child that execs */
        PyObject *pf = PyObject_GetAttr(prev, s->a_flags);
        int has = pf ? PySequence_Contains(pf, s->s_clone) : -1;
        Py_XDECREF(pf);
        if (has < 0) return -1;
        bits |= has ? 1 : 0;
    }
    if (v->flags & F_TRUNC_ARGS) bits |= 2;
    if (v->flags & F_ERROR_CWD) bits |= 8;
    else if (v->cwd_n == 1 && v->cwd[0] == '/') bits |= 4;
    return bits;
}
/* the process_exec line into s->buf, from the process's and its parent's JSON */
static int exec_line(FastProc *s, PyObject *enc, PyObject *parent, long long wall) {
    Buf *b = &s->buf;
    b->n = 0;
    PyObject *pj = process_json(s, parent);
    int bad = !pj || PUTS(b, "{\"process_exec\":{\"process\":") || put(b, PyBytes_AS_STRING(enc), PyBytes_GET_SIZE(enc)) ||
              PUTS(b, ",\"parent\":") || put(b, PyBytes_AS_STRING(pj), PyBytes_GET_SIZE(pj)) ||
              PUTS(b, "},\"node_name\":") || put(b, PyBytes_AS_STRING(s->node_json), PyBytes_GET_SIZE(s->node_json)) ||
              PUTS(b, ",\"time\":\"") || put_time(s, b, wall) || PUTS(b, "\"}");
    Py_XDECREF(pj);
    return bad ? -1 : 0;
}
/* the values exec_process makes for a Process (o[...]) */
enum { O_EID, O_TID, O_NSPID, O_BIN, O_CWD, O_CRED, O_NS, O_CG, O_EXE, O_INO, O_PEID, O_PKEY, O_ARGS_E, O_N };
/* (O_CRED and O_NS are the CredsEntry and NsEntry of creds_ns) */
/* ------------------------------------------------------------------ protobuf */
static const char *const flag_text[12] = {
    "execve", "execve clone", "execve truncArgs", "execve truncArgs clone", "execve rootcwd",
    "execve rootcwd clone", "execve truncArgs rootcwd", "execve truncArgs rootcwd clone", "execve errorCWD",
    "execve errorCWD clone", "execve truncArgs errorCWD", "execve truncArgs errorCWD clone"};
/* Process.pod (field 10) and docker (11) from the pod parts' protobuf pieces, the container's pid added as
 * pod_object adds it */
static int pb_pod(Buf *b, PyObject *parts, unsigned long long pid, unsigned long long nspid) {
    PyObject *head = PyTuple_GET_ITEM(parts, 4), *body = PyTuple_GET_ITEM(parts, 5);
    PyObject *tail = PyTuple_GET_ITEM(parts, 6), *dk = PyTuple_GET_ITEM(parts, 7);
    int with_pid = body != Py_None && pod_pid(pid, nspid);
    Py_ssize_t pid_n = with_pid ? 3 + varint_len(nspid) : 0;  /* tag, length, 0x08, the value */
    Py_ssize_t c_n = body != Py_None ? PyBytes_GET_SIZE(body) + pid_n : 0;
    Py_ssize_t n = PyBytes_GET_SIZE(head) + (body != Py_None ? ld_size(4, c_n) : 0) + PyBytes_GET_SIZE(tail);
    if (put_ld_head(b, 10, n) || put_bytes(b, head)) return -1;
    if (body != Py_None && (put_ld_head(b, 4, c_n) || put_bytes(b, body))) return -1;
    if (with_pid && (put_ld_head(b, 5, 1 + varint_len(nspid)) || put_varint(b, 0x08) || put_varint(b, nspid)))
        return -1;
    return put_bytes(b, tail) || put_bytes(b, dk);
}
/* Process.binary_properties (field 18): {file: {inode: {number}, path}} */
static int pb_binary_properties(Buf *b, PyObject *exe, unsigned long long ino) {
    Py_ssize_t pn; const char *path = PyUnicode_AsUTF8AndSize(exe, &pn);
    if (!path) return -1;
    Py_ssize_t inode_n = ino ? 1 + varint_len(ino) : 0;
    Py_ssize_t file_n = (ino ? ld_size(1, inode_n) : 0) + (pn ? ld_size(2, pn) : 0);
    if (put_ld_head(b, 18, ld_size(4, file_n)) || put_ld_head(b, 4, file_n)) return -1;
    if (ino && (put_ld_head(b, 1, inode_n) || put_varint(b, 0x08) || put_varint(b, ino))) return -1;
    return pn ? put_ld(b, 2, path, pn) : 0;
}
/* the process's tetragon.Process bytes into s->pbo: the fields of render_process's JSON in field-number order,
 * proto3 defaults left out, as ProtoEventEncoder.process_bytes encodes that JSON */
static int render_process_pb(FastProc *s, const ExecView *v, PyObject *const *o, int bits, long long wall,
                             PyObject *pod) {
    PyObject *joined = PyTuple_GET_ITEM(o[O_ARGS_E], 2);
    char ts[32]; int ts_n = timestamp_pb(wall, ts);
    Buf *b = &s->pbo;
    b->n = 0;
    if (ts_n < 0 || put_str_field(b, 1, o[O_EID]) || put_u32_wrapper(b, 2, v->pid) || put_u32_wrapper(b, 3, v->uid) ||
        put_str_field(b, 4, o[O_CWD]) || put_str_field(b, 5, o[O_BIN]))
        return -1;
    if (PyBytes_GET_SIZE(joined) && put_ld_bytes(b, 6, joined)) return -1;
    if (put_ld(b, 7, flag_text[bits], (Py_ssize_t)strlen(flag_text[bits])) || put_ld(b, 8, ts, ts_n) ||
        put_u32_wrapper(b, 9, v->auid))
        return -1;
    if (pod && pb_pod(b, pod, v->pid, v->nspid)) return -1;
    if (put_str_field(b, 12, o[O_PEID]) || put_bytes(b, PyTuple_GET_ITEM(o[O_CRED], 3)) ||
        put_bytes(b, PyTuple_GET_ITEM(o[O_NS], 2)) || put_u32_wrapper(b, 16, v->tid) ||
        put_bytes(b, PyTuple_GET_ITEM(o[O_CRED], 4)))
        return -1;
    return PyUnicode_GET_LENGTH(o[O_EXE]) ? pb_binary_properties(b, o[O_EXE], v->ino) : 0;
}
/* a process's memoised tetragon.Process bytes (new reference): Process.encoded_pb, else proto_pb renders them
 * (and memoises them on it) */
static PyObject *process_pb(FastProc *s, PyObject *proc) {
    PyObject *pb = PyObject_GetAttr(proc, s->a_encoded_pb);
    if (pb && pb != Py_None && PyBytes_Check(pb)) return pb;
    Py_XDECREF(pb);
    pb = pb ? PyObject_CallOneArg(s->proto_pb, proc) : NULL;
    if (pb && !PyBytes_Check(pb)) { Py_CLEAR(pb); PyErr_SetString(PyExc_TypeError, "process_bytes: bytes expected"); }
    return pb;
}
/* GetEventsResponse fields after the event: node_name (1000), time (1001) */
static int pb_node_time(FastProc *s, Buf *b, const char *ts, int ts_n) {
    return put_bytes(b, s->node_pb) || put_ld(b, 1001, ts, ts_n);
}
/* ProtoEventEncoder.exec_event's bytes into s->pbe (then pb_out); 0, or -1 */
static int exec_pb(FastProc *s, PyObject *proc, PyObject *parent, long long wall) {
    char ts[32]; int ts_n = timestamp_pb(wall, ts), rc = -1;
    PyObject *pb = process_pb(s, proc), *ppb = pb ? process_pb(s, parent) : NULL;
    Buf *b = &s->pbe;
    b->n = 0;
    if (ppb && ts_n >= 0 &&
        !put_ld_head(b, 1, ld_size(1, PyBytes_GET_SIZE(pb)) + ld_size(2, PyBytes_GET_SIZE(ppb))) &&
        !put_ld_bytes(b, 1, pb) && !put_ld_bytes(b, 2, ppb) && !pb_node_time(s, b, ts, ts_n))
        rc = 0;
    Py_XDECREF(pb); Py_XDECREF(ppb);
    return rc;
}
/* ProtoEventEncoder.exit_event's bytes into s->pbe (then pb_out); parent may be None; 0, or -1 */
static int exit_pb(FastProc *s, PyObject *proc, PyObject *parent, long long wall, unsigned sig, unsigned status) {
    char ts[32]; int ts_n = timestamp_pb(wall, ts), rc = -1;
    PyObject *pb = process_pb(s, proc), *ppb = pb && parent != Py_None ? process_pb(s, parent) : NULL;
    PyObject *name = sig ? PyList_GET_ITEM(s->signals, sig) : NULL;
    if (!pb || (parent != Py_None && !ppb) || ts_n < 0) goto done;
    Py_ssize_t n = ld_size(1, PyBytes_GET_SIZE(pb)) + (ppb ? ld_size(2, PyBytes_GET_SIZE(ppb)) : 0) +
                   (name ? ld_size(3, PyBytes_GET_SIZE(name)) : 0) + (status ? 1 + varint_len(status) : 0) +
                   ld_size(5, ts_n);
    Buf *b = &s->pbe;
    b->n = 0;
    if (put_ld_head(b, 5, n) || put_ld_bytes(b, 1, pb) || (ppb && put_ld_bytes(b, 2, ppb)) ||
        (name && put_ld_bytes(b, 3, name)) || (status && (put_varint(b, 4 << 3) || put_varint(b, status))) ||
        put_ld(b, 5, ts, ts_n) || pb_node_time(s, b, ts, ts_n))
        goto done;
    rc = 0;
done:
    Py_XDECREF(pb); Py_XDECREF(ppb);
    return rc;
}
/* the exec's JSON onto Process.encoded (and its pod onto Process.pod): rendered here, or, for a pod the glue
 * left to Python (py_render), by the encoder's process_json, once for this process */
static int exec_encode(FastProc *s, PyObject *proc, const ExecView *v, PyObject *const *o, int bits, long long wall,
                       PyObject *pod, int py_render) {
    if (py_render) {
        PyObject *j = PyObject_CallMethodOneArg(s->encoder, s->a_pjson, proc);
        Py_XDECREF(j);
        return j ? 0 : -1;
    }
    if (render_process(s, o[O_EID], v->pid, v->uid, o[O_CWD], o[O_BIN], PyTuple_GET_ITEM(o[O_ARGS_E], 1), bits, wall,
                       v->auid, pod, v->nspid, o[O_PEID], o[O_CRED], o[O_NS], v->tid, o[O_EXE], v->ino))
        return -1;
    PyObject *enc = PyBytes_FromStringAndSize(s->obj.p, s->obj.n);
    int bad = !enc || PyObject_SetAttr(proc, s->a_encoded, enc);
    Py_XDECREF(enc);
    if (!bad && s->want_pb) {  /* its protobuf too, while a gRPC client follows */
        PyObject *pb = render_process_pb(s, v, o, bits, wall, pod) ? NULL
                                                                    : PyBytes_FromStringAndSize(s->pbo.p, s->pbo.n);
        bad = !pb || PyObject_SetAttr(proc, s->a_encoded_pb, pb);
        Py_XDECREF(pb);
    }
    if (bad || !pod) return bad ? -1 : 0;
    PyObject *d = pod_object(s, pod, v->pid, v->nspid);
    bad = !d || PyObject_SetAttr(proc, s->a_pod, d);
    Py_XDECREF(d);
    return bad ? -1 : 0;
}
/* the exec's Process (new reference), built as ProcessEvents._on_exec builds it, inserted in the cache and
 * with its JSON on it */
static PyObject *exec_process(FastProc *s, PyObject *raw, const ExecView *v, PyObject *key, PyObject *pid,
                              PyObject *ktime, PyObject *parent, int bits, PyObject *now, long long offset,
                              PyObject *pod, int py_render) {
    PyObject *o[O_N] = {0}, *proc = NULL;
    int same_exe = v->exe_n == v->fn_n && !memcmp(v->exe, v->fn, v->fn_n);
    if ((o[O_EID] = exec_id(s, v->ktime, v->pid)) &&  /* tid and nspid are mostly the pid: one object (memory) */
        (o[O_TID] = v->tid == v->pid ? Py_NewRef(pid) : PyLong_FromUnsignedLongLong(v->tid)) &&
        (o[O_NSPID] = v->nspid == v->pid ? Py_NewRef(pid) : PyLong_FromUnsignedLongLong(v->nspid)) &&
        (o[O_BIN] = text(s, &s->last[L_FN], (const char *)v->fn, v->fn_n)) &&
        (o[O_ARGS_E] = args_entry(s, (const char *)v->argv, v->args_n)) &&
        (o[O_CWD] = text(s, &s->last[L_CWD], (const char *)v->cwd, v->cwd_n)) &&
        !creds_ns(s, raw, &o[O_CRED], &o[O_NS]) && (o[O_CG] = shared_int(s, v->cgroup)) &&
        (o[O_EXE] = same_exe ? Py_NewRef(s->s_empty) : text(s, &s->last[L_EXE], (const char *)v->exe, v->exe_n)) &&
        (o[O_INO] = shared_int(s, v->ino)) && (o[O_PEID] = PyObject_GetAttr(parent, s->a_exec_id)) &&
        (o[O_PKEY] = PyObject_GetAttr(parent, s->a_key))) {
        PyObject *cargs[17] = {key, o[O_EID], o[O_PKEY], o[O_PEID], pid, o[O_TID], o[O_NSPID], o[O_BIN],
                               PyTuple_GET_ITEM(o[O_ARGS_E], 0), o[O_CWD], s->flag_tuples[bits], ktime,
                               PyTuple_GET_ITEM(o[O_CRED], 0), PyTuple_GET_ITEM(o[O_NS], 0), o[O_CG], o[O_EXE],
                               o[O_INO]};
        proc = ctor_new(&s->process_ctor, cargs);
    }
    if (proc && (cache_insert(s, proc, key, pid, parent, now) ||
                 exec_encode(s, proc, v, o, bits, (long long)v->ktime + offset, pod, py_render)))
        Py_CLEAR(proc);
    for (int i = 0; i < O_N; i++) Py_XDECREF(o[i]);
    return proc;
}
/* the exec's pod (*parts borrowed: NULL for a host process or without a resolver): 0 rendered here, 1 by the
 * Python encoder (a pair the glue did not resolve, or left to Python), -1 on error */
static int exec_pod(FastProc *s, const ExecView *v, PyObject **parts) {
    *parts = NULL;
    if (!s->pods) return 0;
    PyObject *k = Py_BuildValue("(KK)", v->netns, v->cgroup);
    PyObject *e = k ? PyDict_GetItemWithError(s->pods, k) : NULL;
    Py_XDECREF(k);
    if (!e) return PyErr_Occurred() ? -1 : 1;
    if (e == Py_None) return 0;
    if (!pod_parts_ok(e)) return 1;
    *parts = e;
    return 0;
}
/* 1: handled, 0: for the Python path (nothing changed), -1: error */
static int on_exec(FastProc *s, PyObject *raw, PyObject *now, long long offset, PyObject *out) {
    ExecView v;
    if (!exec_view(s, raw, &v)) return 0;
    PyObject *pid = PyLong_FromUnsignedLongLong(v.pid), *ktime = PyLong_FromUnsignedLongLong(v.ktime);
    PyObject *ppid = PyLong_FromUnsignedLongLong(v.ppid), *key = pid && ktime ? PyTuple_Pack(2, pid, ktime) : NULL;
    PyObject *parent = NULL, *proc = NULL, *ev = NULL, *bin = NULL;
    int rc = -1;
    if (!key || !ppid) goto done;
    if (PyDict_GetItemWithError(s->entries, key)) { rc = 0; goto done; }  /* seen: duplicate or re-seeded */
    PyObject *prev = PyErr_Occurred() ? NULL : cache_current(s, pid);  /* borrowed; the cache keeps it */
    if (PyErr_Occurred()) goto done;
    if (!(parent = cache_resolve(s, ppid, v.pkt))) { rc = PyErr_Occurred() ? -1 : 0; goto done; }  /* a "miss" */
    PyObject *pod;
    int bits = exec_bits(s, &v, prev), py_render = bits < 0 ? -1 : exec_pod(s, &v, &pod);
    if (py_render < 0 || !(proc = exec_process(s, raw, &v, key, pid, ktime, parent, bits, now, offset, pod, py_render)))
        goto done;
    PyObject *enc = PyObject_GetAttr(proc, s->a_encoded);
    int bad = !enc || exec_line(s, enc, parent, (long long)v.ktime + offset);
    Py_XDECREF(enc);
    PyObject *pb = NULL;
    if (bad || !(bin = PyObject_GetAttr(proc, s->a_binary)) ||
        (s->want_pb && (exec_pb(s, proc, parent, (long long)v.ktime + offset) || pb_out(s, &pb))) ||
        !(ev = emit(s, s->s_exec, proc, parent, &s->buf, pb)) ||
        PyList_Append(out, ev) || count(s, s->s_exec, bin))
        goto done;
    rc = 1;
done:
    Py_XDECREF(pid); Py_XDECREF(ktime); Py_XDECREF(ppid); Py_XDECREF(key);
    Py_XDECREF(parent); Py_XDECREF(proc); Py_XDECREF(ev); Py_XDECREF(bin);
    return rc;
}

/* ------------------------------------------------------------------ exit */
static int on_exit_rec(FastProc *s, PyObject *raw, PyObject *now, long long offset, PyObject *out) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    if (PyBytes_GET_SIZE(raw) < s->t_min) return 0;
    unsigned long long ekt = rd(p, s->t[T_EKTIME]), code = rd(p, s->t[T_CODE]);
    long long wall = (long long)rd(p, s->t[T_KTIME]) + offset;
    PyObject *pid = PyLong_FromUnsignedLongLong(rd(p, s->t[T_PID])), *proc = NULL, *parent = NULL;
    PyObject *alive = NULL, *pkey = NULL, *pj = NULL, *ppj = NULL, *ev = NULL, *bin = NULL, *r = NULL;
    int rc = -1;
    if (!pid) return -1;
    if (ekt) {
        PyObject *kt = PyLong_FromUnsignedLongLong(ekt), *key = kt ? PyTuple_Pack(2, pid, kt) : NULL;
        proc = key ? PyDict_GetItemWithError(s->entries, key) : NULL;
        Py_XDECREF(kt); Py_XDECREF(key);
        if (!key) goto done;
    }
    if (!proc && !PyErr_Occurred()) proc = cache_current(s, pid);
    if (!proc) { rc = PyErr_Occurred() ? -1 : 0; goto done; }  /* unknown: a stub, made there */
    Py_INCREF(proc);
    if (!(alive = PyObject_GetAttr(proc, s->a_alive))) goto done;
    if (alive != Py_True) { rc = 0; goto done; }  /* exited already: a duplicate, counted there */
    if (!(pkey = PyObject_GetAttr(proc, s->a_parent_key))) goto done;
    parent = pkey != Py_None ? PyDict_GetItemWithError(s->entries, pkey) : NULL;
    if (!parent && PyErr_Occurred()) goto done;
    parent = Py_NewRef(parent ? parent : Py_None);
    Buf *b = &s->buf;
    b->n = 0;
    if (!(pj = process_json(s, proc)) || PUTS(b, "{\"process_exit\":{\"process\":") ||
        put(b, PyBytes_AS_STRING(pj), PyBytes_GET_SIZE(pj)))
        goto done;
    if (parent != Py_None && (!(ppj = process_json(s, parent)) || PUTS(b, ",\"parent\":") ||
                              put(b, PyBytes_AS_STRING(ppj), PyBytes_GET_SIZE(ppj))))
        goto done;
    unsigned sig = code & 0x7F, status = (code >> 8) & 0xFF;
    if (sig) {
        PyObject *name = PyList_GET_ITEM(s->signals, sig);
        if (PUTS(b, ",\"signal\":\"") || put(b, PyBytes_AS_STRING(name), PyBytes_GET_SIZE(name)) || PUTS(b, "\""))
            goto done;
    }
    if (status && (PUTS(b, ",\"status\":") || put_u64(b, status))) goto done;
    if (PUTS(b, ",\"time\":\"")) goto done;
    Py_ssize_t t0 = b->n;
    if (put_time(s, b, wall)) goto done;
    Py_ssize_t tn = b->n - t0;  /* the event's time, written twice */
    if (PUTS(b, "\"},\"node_name\":") || put(b, PyBytes_AS_STRING(s->node_json), PyBytes_GET_SIZE(s->node_json)) ||
        PUTS(b, ",\"time\":\"") || buf_grow(b, tn))
        goto done;
    memcpy(b->p + b->n, b->p + t0, tn);
    b->n += tn;
    if (PUTS(b, "\"}")) goto done;
    PyObject *pb = NULL;
    if ((s->want_pb && (exit_pb(s, proc, parent, wall, sig, status) || pb_out(s, &pb))) ||
        !(ev = emit(s, s->s_exit, proc, parent, b, pb)) || PyList_Append(out, ev))
        goto done;
    if (!(bin = PyObject_GetAttr(proc, s->a_binary)) || count(s, s->s_exit, bin)) goto done;
    if (cache_exit(s, proc, now)) goto done;
    rc = 1;
done:
    Py_DECREF(pid); Py_XDECREF(proc); Py_XDECREF(alive); Py_XDECREF(pkey); Py_XDECREF(pj); Py_XDECREF(ppj);
    Py_XDECREF(ev); Py_XDECREF(bin); Py_XDECREF(r); Py_XDECREF(parent);
    return rc;
}

/* ------------------------------------------------------------------ clone */
/* the clone's child as ProcessEvents._on_clone builds it (new reference): its parent's details (inh: the
 * parent's inherit_names values), its own identity, pid, tid and nspid, flags ("clone",), no JSON yet */
static PyObject *clone_process(FastProc *s, const unsigned char *p, PyObject *key, PyObject *pid, PyObject *ktime,
                               PyObject *const *inh) {
    unsigned long long vpid = rd(p, s->c[C_PID]), tid = rd(p, s->c[C_TID]), nspid = rd(p, s->c[C_NSPID]);
    PyObject *eid = exec_id(s, rd(p, s->c[C_KTIME]), vpid), *proc = NULL;
    PyObject *t = eid ? (tid == vpid ? Py_NewRef(pid) : PyLong_FromUnsignedLongLong(tid)) : NULL;
    PyObject *n = t ? (nspid == vpid ? Py_NewRef(pid) : PyLong_FromUnsignedLongLong(nspid)) : NULL;
    if (n) {
        PyObject *cargs[17] = {key, eid, inh[I_KEY], inh[I_EID], pid, t, n, inh[I_BIN], inh[I_ARGS], inh[I_CWD],
                               s->clone_flags, ktime, inh[I_CREDS], inh[I_NS], inh[I_CG], inh[I_EXE], inh[I_INO]};
        proc = ctor_new(&s->process_ctor, cargs);
    }
    Py_XDECREF(eid); Py_XDECREF(t); Py_XDECREF(n);
    return proc;
}
/* a clone record: its child inserted in the cache (no event). 1: handled, 0: for the Python path (short, a
 * duplicate, an unknown parent: counted there), -1: error */
static int on_clone(FastProc *s, PyObject *raw, PyObject *now) {
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
    if (PyBytes_GET_SIZE(raw) < s->c_min) return 0;
    PyObject *pid = PyLong_FromUnsignedLongLong(rd(p, s->c[C_PID]));
    PyObject *ktime = PyLong_FromUnsignedLongLong(rd(p, s->c[C_KTIME]));
    PyObject *ppid = PyLong_FromUnsignedLongLong(rd(p, s->c[C_PPID]));
    PyObject *key = pid && ktime ? PyTuple_Pack(2, pid, ktime) : NULL, *parent = NULL, *proc = NULL, *inh[I_N] = {0};
    int rc = -1;
    if (!key || !ppid) goto done;
    if (PyDict_GetItemWithError(s->entries, key)) { rc = 0; goto done; }  /* seen: a duplicate */
    if (PyErr_Occurred()) goto done;
    if (!(parent = cache_resolve(s, ppid, rd(p, s->c[C_PKTIME])))) { rc = PyErr_Occurred() ? -1 : 0; goto done; }
    for (int i = 0; i < I_N; i++)
        if (!(inh[i] = PyObject_GetAttr(parent, s->a_inherit[i]))) goto done;
    if (!(proc = clone_process(s, p, key, pid, ktime, inh)) || cache_insert(s, proc, key, pid, parent, now)) goto done;
    rc = 1;
done:
    Py_XDECREF(pid); Py_XDECREF(ktime); Py_XDECREF(ppid); Py_XDECREF(key); Py_XDECREF(parent); Py_XDECREF(proc);
    for (int i = 0; i < I_N; i++) Py_XDECREF(inh[i]);
    return rc;
}

/* ------------------------------------------------------------------ the type */
static PyObject *handle_batch(FastProc *s, PyObject *raws, PyObject *now, long long offset);
static PyObject *FastProc_handle(FastProc *s, PyObject *args) {
    PyObject *raws, *now, *pods = Py_None;
    long long offset;
    int want_pb = PB_NONE;
    if (!PyArg_ParseTuple(args, "O!OL|Oi:handle", &PyList_Type, &raws, &now, &offset, &pods, &want_pb)) return NULL;
    if (want_pb < PB_NONE || want_pb > PB_RUN) { PyErr_SetString(PyExc_ValueError, "want_pb: 0, 1 or 2"); return NULL; }
    if (pods != Py_None && !PyDict_Check(pods)) { PyErr_SetString(PyExc_TypeError, "pods: a dict or None"); return NULL; }
    if (want_pb && s->proto_pb == Py_None) { PyErr_SetString(PyExc_ValueError, "want_pb: no proto_pb"); return NULL; }
    s->want_pb = want_pb;
    s->grun.n = 0;
    s->grun_count = 0;
    if (!want_pb && s->grun.p) {  /* no client follows now: the run's buffer (megabytes) goes back */
        PyMem_Free(s->grun.p);
        s->grun.p = NULL;
        s->grun.cap = 0;
    }
    Py_XSETREF(s->pods, pods == Py_None ? NULL : Py_NewRef(pods));
    PyObject *out = handle_batch(s, raws, now, offset);
    Py_CLEAR(s->pods);
    return out;
}
/* pod_keys(raws): the distinct (netns inode, cgroup id) pairs of the batch's exec records, for the resolver */
static PyObject *FastProc_pod_keys(FastProc *s, PyObject *raws) {
    if (!PyList_Check(raws)) { PyErr_SetString(PyExc_TypeError, "a list of records expected"); return NULL; }
    PyObject *keys = PySet_New(NULL);
    unsigned long long last_net = 0, last_cg = 0;
    int have = 0;
    for (Py_ssize_t i = 0; keys && i < PyList_GET_SIZE(raws); i++) {
        PyObject *raw = PyList_GET_ITEM(raws, i);
        if (!PyBytes_Check(raw) || PyBytes_GET_SIZE(raw) < s->x_min || PyBytes_AS_STRING(raw)[0] != OP_EXEC) continue;
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(raw);
        unsigned long long net = rd(p, s->x[X_NETNS]), cg = rd(p, s->x[X_CGROUP]);
        if (have && net == last_net && cg == last_cg) continue;
        PyObject *k = Py_BuildValue("(KK)", net, cg);
        if (!k || PySet_Add(keys, k)) Py_CLEAR(keys);
        Py_XDECREF(k);
        last_net = net; last_cg = cg; have = 1;
    }
    return keys;
}
/* the Python path's events (a record handed back) onto the run too, in order */
static int slow_run(FastProc *s, PyObject *more) {
    PyObject *it = PyObject_GetIter(more), *ev;
    if (!it) return -1;
    while ((ev = PyIter_Next(it))) {
        PyObject *pb = PyObject_GetAttr(ev, s->a_pb);
        int bad = !pb || (PyBytes_Check(pb) && run_add(s, PyBytes_AS_STRING(pb), PyBytes_GET_SIZE(pb)));
        Py_XDECREF(pb); Py_DECREF(ev);
        if (bad) { Py_DECREF(it); return -1; }
    }
    Py_DECREF(it);
    return PyErr_Occurred() ? -1 : 0;
}
/* take_run(): (the last handle's pb bytes as consecutive gRPC messages, how many), what grpc_run(events) gives for
 * its events; the run is emptied */
static PyObject *FastProc_take_run(FastProc *s, PyObject *unused) {
    PyObject *out = Py_BuildValue("(y#n)", s->grun.p ? s->grun.p : "", s->grun.n, s->grun_count);
    s->grun.n = 0;
    s->grun_count = 0;
    return out;
}
static PyObject *handle_batch(FastProc *s, PyObject *raws, PyObject *now, long long offset) {
    PyObject *out;
    PyObject *cap = PyObject_GetAttrString(s->cache, "capacity");
    s->capacity = cap ? PyLong_AsSsize_t(cap) : -1;
    Py_XDECREF(cap);
    if ((s->capacity == -1 && PyErr_Occurred()) || !(out = PyList_New(0))) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(raws); i++) {
        PyObject *raw = PyList_GET_ITEM(raws, i);
        int rc = 0;
        if (PyBytes_Check(raw) && PyBytes_GET_SIZE(raw) > 0) {
            unsigned char op = (unsigned char)PyBytes_AS_STRING(raw)[0];
            Py_INCREF(raw);  /* the list is the caller's: keep the record alive while Python code runs */
            rc = op == OP_EXEC    ? on_exec(s, raw, now, offset, out)
                 : op == OP_EXIT  ? on_exit_rec(s, raw, now, offset, out)
                 : op == OP_CLONE ? on_clone(s, raw, now)
                                  : 0;
            Py_DECREF(raw);
        }
        if (rc == 0) {  /* the Python path, for this record, in order */
            PyObject *more = count_flush(s) ? NULL : PyObject_CallOneArg(s->slow, raw);
            PyObject *r = more && !(s->want_pb && slow_run(s, more)) ? _PyList_Extend((PyListObject *)out, more) : NULL;
            Py_XDECREF(more);
            if (!r) rc = -1;
            Py_XDECREF(r);
        }
        if (rc < 0) {  /* an error is set: the pending run is dropped, not written with it pending */
            Py_CLEAR(s->run_kind); Py_CLEAR(s->run_bin);
            s->run_n = 0;
            Py_DECREF(out);
            return NULL;
        }
    }
    if (count_flush(s)) Py_CLEAR(out);
    return out;
}

static int fields(PyObject *seq, Field *f, Py_ssize_t n, const char *what) {
    if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) != n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd (offset, size) pairs expected", what, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(seq, i), "nn", &f[i].off, &f[i].size)) return -1;
        if (f[i].off < 0 || (f[i].size != 1 && f[i].size != 2 && f[i].size != 4 && f[i].size != 8)) {
            PyErr_Format(PyExc_ValueError, "%s[%zd]: bad field (%zd, %zd)", what, i, f[i].off, f[i].size);
            return -1;
        }
    }
    return 0;
}

static PyObject *intern(const char *s) { return PyUnicode_InternFromString(s); }

static int FastProc_init(FastProc *s, PyObject *args, PyObject *kw) {
    PyObject *xf, *tf, *cf, *node, *r[12], *pspec, *espec;
    if (!PyArg_ParseTuple(args, "OOOnnnn(nn)(nn)UOOOOOOOOOOO!OOO:FastProc", &xf, &tf, &cf, &s->x_tail, &s->x_min,
                          &s->t_min, &s->c_min, &s->creds_off, &s->creds_len, &s->ns_off, &s->ns_len, &node,
                          &r[0], &r[1], &r[2], &r[3], &r[4], &r[5], &r[6], &r[7], &r[8], &r[9], &PyList_Type, &r[10],
                          &pspec, &espec, &r[11]))
        return -1;
    if (r[11] != Py_None && !PyCallable_Check(r[11])) {
        PyErr_SetString(PyExc_TypeError, "proto_pb: a callable or None");
        return -1;
    }
    ctor_clear(&s->process_ctor);
    ctor_clear(&s->event_ctor);
    if (ctor_init(&s->process_ctor, r[0], pspec, 17) || ctor_init(&s->event_ctor, r[1], espec, 4)) return -1;
    PyObject **refs[] = {&s->process_type, &s->event_type, &s->cache, &s->entries, &s->by_pid, &s->events,
                         &s->by_binary, &s->encoder, &s->slow, &s->creds_ns, &s->signals, &s->proto_pb};
    for (size_t i = 0; i < sizeof refs / sizeof refs[0]; i++) Py_XSETREF(*refs[i], Py_NewRef(r[i]));
    if (fields(xf, s->x, X_NFIELDS, "exec fields") || fields(tf, s->t, T_NFIELDS, "exit fields") ||
        fields(cf, s->c, C_NFIELDS, "clone fields"))
        return -1;
    if (!PyDict_Check(s->entries) || !PyDict_Check(s->by_pid) || !PyDict_Check(s->events) || !PyDict_Check(s->by_binary)) {
        PyErr_SetString(PyExc_TypeError, "the cache's and counters' tables must be dicts");
        return -1;
    }
    if (PyList_GET_SIZE(s->signals) != 128) { PyErr_SetString(PyExc_ValueError, "128 signal names expected"); return -1; }
    for (Py_ssize_t i = 0; i < 128; i++)
        if (!PyBytes_Check(PyList_GET_ITEM(s->signals, i))) { PyErr_SetString(PyExc_TypeError, "signal names: bytes"); return -1; }
    Py_ssize_t nn; const char *ns = PyUnicode_AsUTF8AndSize(node, &nn);
    if (!ns) return -1;
    if (nn >= (Py_ssize_t)sizeof s->node) { PyErr_SetString(PyExc_ValueError, "node name too long"); return -1; }
    memcpy(s->node, ns, nn); s->node_n = nn;
    Buf nj = {0};
    if (put_json_utf8(&nj, ns, nn)) return -1;
    s->node_json = PyBytes_FromStringAndSize(nj.p, nj.n);
    nj.n = 0;
    if (!s->node_json || put_ld(&nj, 1000, ns, nn)) { PyMem_Free(nj.p); return -1; }
    Py_XSETREF(s->node_pb, PyBytes_FromStringAndSize(nj.p, nj.n));
    PyMem_Free(nj.p);
    if (!s->node_pb) return -1;
    s->last_sec = -1;
    if (!s->node_json || !(s->memo_cred = PyDict_New()) || !(s->memo_ns = PyDict_New()) ||
        !(s->memo_text = PyDict_New()) || !(s->memo_args = PyDict_New()) || !(s->memo_int = PyDict_New()) || !(s->s_exec = intern("process_exec")) ||
        !(s->s_exit = intern("process_exit")) || !(s->s_execve = intern("execve")) || !(s->s_clone = intern("clone")) ||
        !(s->s_empty = intern("")) || !(s->empty_tuple = PyTuple_New(0)) || !(s->a_key = intern("key")) ||
        !(s->a_encoded = intern("encoded")) || !(s->a_alive = intern("alive")) ||
        !(s->a_parent_key = intern("parent_key")) || !(s->a_binary = intern("binary")) ||
        !(s->a_flags = intern("flags")) || !(s->a_exec_id = intern("exec_id")) || !(s->a_insert = intern("insert")) ||
        !(s->a_exit = intern("exit")) || !(s->a_pid = intern("pid")) || !(s->a_refcnt = intern("refcnt")) ||
        !(s->a_end = intern("_end")) || !(s->a_evict = intern("_evict")) || !(s->a_pjson = intern("process_json")) ||
        !(s->a_pod = intern("pod")) || !(s->a_container = intern("container")) ||
        !(s->a_encoded_pb = intern("encoded_pb")) || !(s->a_pb = intern("pb")))
        return -1;
    for (int i = 0; i < I_N; i++)
        if (!s->a_inherit[i] && !(s->a_inherit[i] = intern(inherit_names[i]))) return -1;
    if (!s->clone_flags && !(s->clone_flags = PyTuple_Pack(1, s->s_clone))) return -1;
    /* Process.flags as the Python path builds them: execve, clone, truncArgs, errorCWD | rootcwd */
    for (unsigned bits = 0; bits < 12; bits++) {
        PyObject *l = PyList_New(0);
        int bad = !l || PyList_Append(l, s->s_execve) || ((bits & 1) && PyList_Append(l, s->s_clone));
        PyObject *w = NULL;
        if (!bad && (bits & 2)) bad = !(w = intern("truncArgs")) || PyList_Append(l, w);
        Py_XDECREF(w); w = NULL;
        if (!bad && (bits & 12)) bad = !(w = intern(bits & 8 ? "errorCWD" : "rootcwd")) || PyList_Append(l, w);
        Py_XDECREF(w);
        if (bad || !(s->flag_tuples[bits] = PyList_AsTuple(l))) { Py_XDECREF(l); return -1; }
        Py_DECREF(l);
    }
    return 0;
}

static int FastProc_traverse(FastProc *s, visitproc visit, void *arg) {
    Py_VISIT(s->process_type); Py_VISIT(s->event_type); Py_VISIT(s->cache); Py_VISIT(s->entries);
    Py_VISIT(s->by_pid); Py_VISIT(s->events); Py_VISIT(s->by_binary); Py_VISIT(s->encoder); Py_VISIT(s->slow);
    Py_VISIT(s->creds_ns); Py_VISIT(s->memo_cred); Py_VISIT(s->memo_ns); Py_VISIT(s->proto_pb);
    for (int i = 0; i < L_COUNT; i++) Py_VISIT(s->last[i].obj);
    return 0;
}

static int FastProc_clear(FastProc *s) {
    PyObject **all[] = {&s->node_json, &s->process_type, &s->event_type, &s->cache, &s->entries, &s->by_pid,
                        &s->events, &s->by_binary, &s->encoder, &s->slow, &s->creds_ns, &s->signals, &s->memo_cred,
                        &s->memo_ns, &s->memo_text, &s->memo_args, &s->memo_int, &s->s_exec, &s->s_exit, &s->s_execve,
                        &s->s_clone, &s->s_empty, &s->empty_tuple, &s->a_key, &s->a_encoded, &s->a_alive,
                        &s->a_parent_key, &s->a_binary, &s->a_flags, &s->a_exec_id, &s->a_insert, &s->a_exit, &s->a_pid,
                        &s->a_refcnt, &s->a_end, &s->a_evict,
                        &s->a_pjson, &s->a_pod, &s->a_container, &s->pods, &s->proto_pb, &s->node_pb,
                        &s->a_encoded_pb, &s->a_pb};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) Py_CLEAR(*all[i]);
    for (int i = 0; i < 16; i++) Py_CLEAR(s->flag_tuples[i]);
    for (int i = 0; i < I_N; i++) Py_CLEAR(s->a_inherit[i]);
    Py_CLEAR(s->clone_flags);
    ctor_clear(&s->process_ctor);
    ctor_clear(&s->event_ctor);
    for (int i = 0; i < L_COUNT; i++) last_clear(&s->last[i]);
    Py_CLEAR(s->run_kind); Py_CLEAR(s->run_bin);
    s->run_n = 0;
    return 0;
}

static void FastProc_dealloc(FastProc *s) {
    PyObject_GC_UnTrack(s);
    FastProc_clear(s);
    PyMem_Free(s->buf.p);
    PyMem_Free(s->obj.p);
    PyMem_Free(s->pbo.p);
    PyMem_Free(s->pbe.p);
    PyMem_Free(s->grun.p);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *FastProc_memo_sizes(FastProc *s, PyObject *unused) {
    return Py_BuildValue("{snsnsnsnsn}", "creds", PyDict_GET_SIZE(s->memo_cred), "ns", PyDict_GET_SIZE(s->memo_ns),
                         "text", PyDict_GET_SIZE(s->memo_text), "args", PyDict_GET_SIZE(s->memo_args), "ints", PyDict_GET_SIZE(s->memo_int));
}

/* op_runs(raws, table): the runs of consecutive records whose first byte (the op) maps, through the 256-byte
 * table, to one value: [(start, end, value), ...] in ring order (SensorSet.dispatch's per-record scan) */
static PyObject *op_runs(PyObject *mod, PyObject *args) {
    PyObject *raws; Py_buffer tb;
    if (!PyArg_ParseTuple(args, "O!y*:op_runs", &PyList_Type, &raws, &tb)) return NULL;
    PyObject *out = tb.len == 256 ? PyList_New(0) : NULL;
    if (!out) { if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "a 256-byte table expected"); goto end; }
    const unsigned char *table = tb.buf;
    Py_ssize_t n = PyList_GET_SIZE(raws), start = 0;
    int cur = -1;
    for (Py_ssize_t i = 0; i <= n; i++) {
        int v = -2;
        if (i < n) {
            PyObject *r = PyList_GET_ITEM(raws, i);
            v = PyBytes_Check(r) && PyBytes_GET_SIZE(r) ? table[(unsigned char)PyBytes_AS_STRING(r)[0]] : 255;
        }
        if (v == cur) continue;
        if (i > 0) {
            PyObject *t = Py_BuildValue("(nni)", start, i, cur);
            if (!t || PyList_Append(out, t)) { Py_XDECREF(t); Py_CLEAR(out); goto end; }
            Py_DECREF(t);
        }
        start = i; cur = v;
    }
end:
    PyBuffer_Release(&tb);
    return out;
}

/* grpc_run(events): (the events' pb bytes as consecutive gRPC messages -- a 0 byte, the big-endian length, the
 * bytes -- and how many), skipping events without pb: exporter/grpc_api.py framed_run, one pass in C */
static PyObject *grpc_run(PyObject *mod, PyObject *events) {
    if (!PyList_Check(events)) { PyErr_SetString(PyExc_TypeError, "a list of OutEvent expected"); return NULL; }
    static PyObject *a_pb;
    if (!a_pb && !(a_pb = PyUnicode_InternFromString("pb"))) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(events), total = 0, count = 0;
    PyObject *pbs = PyList_New(0);
    if (!pbs) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pb = PyObject_GetAttr(PyList_GET_ITEM(events, i), a_pb);
        if (!pb) { Py_DECREF(pbs); return NULL; }
        if (PyBytes_Check(pb) && PyBytes_GET_SIZE(pb) <= 0xffffffffLL) {
            total += 5 + PyBytes_GET_SIZE(pb); count++;
            if (PyList_Append(pbs, pb)) { Py_DECREF(pb); Py_DECREF(pbs); return NULL; }
        }
        Py_DECREF(pb);
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (!out) { Py_DECREF(pbs); return NULL; }
    char *o = PyBytes_AS_STRING(out);
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *pb = PyList_GET_ITEM(pbs, i);
        Py_ssize_t len = PyBytes_GET_SIZE(pb);
        o[0] = 0; o[1] = (char)(len >> 24); o[2] = (char)(len >> 16); o[3] = (char)(len >> 8); o[4] = (char)len;
        memcpy(o + 5, PyBytes_AS_STRING(pb), len);
        o += 5 + len;
    }
    Py_DECREF(pbs);
    return Py_BuildValue("(Nn)", out, count);
}

static PyMethodDef FastProc_methods[] = {
    {"handle", (PyCFunction)FastProc_handle, METH_VARARGS,
     "handle(raws, now_ns, clock_offset_ns, pods=None, want_pb=False) -> [OutEvent]: a batch of process records, in\n"
     "ring order; pods: (netns_inode, cgroup_id) -> PodParts, None (a host process) or another value (the encoder\n"
     "renders); want_pb: 1, each event's GetEventsResponse bytes too (OutEvent.pb) and all of them as one run of\n"
     "gRPC messages (take_run); 2, the run only (every client takes the batch whole)"},
    {"take_run", (PyCFunction)FastProc_take_run, METH_NOARGS,
     "take_run() -> (bytes, count): the last want_pb handle's events as consecutive gRPC messages (grpc_run's framing)"},
    {"pod_keys", (PyCFunction)FastProc_pod_keys, METH_O,
     "pod_keys(raws) -> {(netns_inode, cgroup_id)}: the pairs of the batch's exec records, for the pod resolver"},
    {"memo_sizes", (PyCFunction)FastProc_memo_sizes, METH_NOARGS, "entries in each of the shared-value memos"},
    {NULL}};

static PyTypeObject FastProcType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lanner.sensors._fastproc.FastProc",
    .tp_basicsize = sizeof(FastProc),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The process sensor's records -> Tetragon JSON lines (see sensors/fastproc.py)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FastProc_init,
    .tp_dealloc = (destructor)FastProc_dealloc,
    .tp_traverse = (traverseproc)FastProc_traverse,
    .tp_clear = (inquiry)FastProc_clear,
    .tp_methods = FastProc_methods,
};

static PyMethodDef module_methods[] = {
    {"op_runs", op_runs, METH_VARARGS, "op_runs(raws, table) -> [(start, end, table[op])]: runs of one value"},
    {"grpc_run", grpc_run, METH_O, "grpc_run(events) -> (bytes, n): the events' pb as consecutive gRPC messages"},
    {NULL}};

static struct PyModuleDef fastproc_module = {PyModuleDef_HEAD_INIT, "_fastproc",
                                             "The process sensor's ring -> JSON loop in C", -1, module_methods};

PyMODINIT_FUNC PyInit__fastproc(void) {
    if (PyType_Ready(&FastProcType) < 0) return NULL;
    PyObject *m = PyModule_Create(&fastproc_module);
    if (m && (PyModule_AddObjectRef(m, "FastProc", (PyObject *)&FastProcType) < 0 ||
              PyModule_AddIntConstant(m, "PB", 1) < 0 ||  /* renders OutEvent.pb (want_pb) */
              PyModule_AddIntConstant(m, "CLONE", 1) < 0 ||  /* handles clone records (takes their layout) */
              PyModule_AddIntConstant(m, "RUN", 2) < 0))  /* frames the batch's gRPC messages as it goes (take_run) */
        Py_CLEAR(m);
    return m;
}
