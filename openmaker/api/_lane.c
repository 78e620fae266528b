/* The invocation lane: InvokeEndpoint answered without Python, on connections that have
 * already carried one (openmaker/api/lane.py hands them over).
 *
 * The Python server costs about 200 µs of CPU an invocation, most of it the interpreter; on
 * two cores shared with the client and the container that is half of direct's throughput
 * (bench/invoke.py). This thread answers the plain case itself: it parses the request, checks
 * its SigV4 signature, picks an instance of the endpoint by weight, passes the request to the
 * container on a kept-alive connection and its 2xx answer back. Anything else it gives back:
 *  - a request it does not take (another path or method, a query, a header it does not know
 *    how to pass on, a signature it cannot match, an endpoint it has no route for ...) goes
 *    back to Python whole, with the connection (`returned`), which answers it as before;
 *  - a container's answer that is not a 2xx (or too large, or none) is turned into the
 *    runtime's error by Python (`on_error`, called from this thread), and written here.
 * So every refusal and error is Python's, spelled once; this file only says yes.
 *
 * Routes (where an endpoint's instances are, by variant and weight) are pushed by Python
 * (`set_route`), the successes' metrics taken by it (`drain`).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEAD 16384                  /* a longer head goes back to Python */
#define MAX_ANSWER_HEAD 65536           /* a container's longer head is no answer */
#define MAX_HEADERS 64
#define PAYLOAD_BYTES (6 * 1024 * 1024) /* SageMaker's cap, each way */
#define MAX_VARIANTS 10
#define MAX_INSTANCES 64
#define MAX_ROUTES 256
#define NAME_CHARS 64
#define STREAM_CHARS 256
#define KEPT_PER_ADDRESS 32
#define CUSTOM_ATTRIBUTES_CHARS 1024
#define INFERENCE_ID_CHARS 64
#define CLOCK_SKEW 900 /* seconds a signature's time may be off, either way */
#define DRAIN_SECONDS 30.0   /* how long a stopping lane waits for the exchanges under way */
#define PARTIAL_SECONDS 60.0 /* a request (or answer) begun and not through within this is dropped */

/* ------------------------------------------------------------------ small things */

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

typedef struct {
    char *data;
    size_t start, len, cap; /* the bytes held are data[start:len] */
} Buf;

static int buf_reserve(Buf *b, size_t more) {
    if (b->start > 0 && b->len + more > b->cap) { /* slide what is held to the front */
        memmove(b->data, b->data + b->start, b->len - b->start);
        b->len -= b->start;
        b->start = 0;
    }
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    char *data = realloc(b->data, cap);
    if (data == NULL) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_add(Buf *b, const void *data, size_t size) {
    if (buf_reserve(b, size)) return -1;
    memcpy(b->data + b->len, data, size);
    b->len += size;
    return 0;
}

static int buf_str(Buf *b, const char *text) { return buf_add(b, text, strlen(text)); }

static size_t buf_size(const Buf *b) { return b->len - b->start; }
static char *buf_at(const Buf *b) { return b->data + b->start; }

static void buf_take(Buf *b, size_t size) {
    b->start += size;
    if (b->start >= b->len) b->start = b->len = 0;
}

static void buf_free(Buf *b) {
    free(b->data);
    memset(b, 0, sizeof *b);
}

#define KEPT_CAPACITY (1024 * 1024)

/* Emptied; its memory kept for the next exchange unless it grew past KEPT_CAPACITY (growing a
 * buffer again for every answer cost more than the rest of the lane's work). */
static void buf_clear(Buf *b) {
    if (b->cap > KEPT_CAPACITY) buf_free(b);
    else b->start = b->len = 0;
}

static void hex(const unsigned char *bytes, size_t size, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < size; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * size] = 0;
}

/* A slice of a buffer: where and how long (never NUL-terminated). */
typedef struct {
    const char *at;
    size_t len;
} Slice;

static int slice_is(Slice s, const char *text) {
    size_t n = strlen(text);
    return s.len == n && strncasecmp(s.at, text, n) == 0;
}

static int parse_size(Slice s, size_t most, size_t *out) {
    if (s.len == 0 || s.len > 10) return -1;
    size_t value = 0;
    for (size_t i = 0; i < s.len; i++) {
        if (s.at[i] < '0' || s.at[i] > '9') return -1;
        value = value * 10 + (size_t)(s.at[i] - '0');
    }
    if (value > most) return -1;
    *out = value;
    return 0;
}

/* Request IDs in a version 4 UUID's form: not secrets, so from a fast generator. */
static uint64_t rng[2];

static uint64_t next_random(void) {
    uint64_t s1 = rng[0];
    const uint64_t s0 = rng[1];
    rng[0] = s0;
    s1 ^= s1 << 23;
    rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return rng[1] + s0;
}

static void request_id(char out[37]) {
    unsigned char bytes[16];
    uint64_t a = next_random(), b = next_random();
    memcpy(bytes, &a, 8);
    memcpy(bytes + 8, &b, 8);
    bytes[6] = (unsigned char)((bytes[6] & 0x0F) | 0x40);
    bytes[8] = (unsigned char)((bytes[8] & 0x3F) | 0x80);
    char digits[33];
    hex(bytes, 16, digits);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", digits, digits + 8, digits + 12, digits + 16,
             digits + 20);
}

/* ------------------------------------------------------------------ routes */

typedef struct {
    char host[48];
    int port;
    char stream[STREAM_CHARS];
} Instance;

typedef struct {
    char name[NAME_CHARS];
    double weight;
    int count;
    Instance instances[MAX_INSTANCES];
} Variant;

typedef struct {
    char name[NAME_CHARS];
    int count;
    Variant variants[MAX_VARIANTS];
} Route;

/* The answered invocations of one variant since Python last took them: what CloudWatch's
 * statistic sets need (latencies in microseconds, each rounded). */
typedef struct {
    char endpoint[NAME_CHARS];
    char variant[NAME_CHARS];
    long long count;
    double model_sum, model_low, model_high, overhead_sum, overhead_low, overhead_high;
} Tally;

/* What one invocation goes to. */
typedef struct {
    char endpoint[NAME_CHARS];
    char variant[NAME_CHARS];
    Instance instance;
} Target;

/* ------------------------------------------------------------------ the lane's state */

enum Kind { WAKE, CLIENT, UPSTREAM };

typedef struct Client Client;
typedef struct Upstream Upstream;

typedef struct {
    int kind;
    uint32_t events; /* what epoll watches it for now (0: not yet added) */
} Handle;

enum ClientState { READING, WAITING, WRITING };

struct Client {
    Handle handle;
    int fd;
    int state;
    Buf in, out;
    double since;      /* when the request under way began arriving, or the connection idled */
    double received;   /* when the request under way was read whole */
    int close_after;   /* the client asked to close: close once answered */
    Upstream *upstream; /* the exchange under way */
    Target target;
    Client *next, *prev;
};

enum UpstreamState { CONNECTING, SENDING, RECEIVING, IDLE };

struct Upstream {
    Handle handle;
    int fd;
    int state;
    char host[48];
    int port;
    Buf out, in, body;
    Client *client; /* NULL once the client has gone */
    Target target;
    double started, deadline, idle_since;
    /* The answer as parsed so far. */
    int head_done, status, chunked, until_close, reusable;
    size_t length, chunk_left;
    int chunk_state; /* 0: size line next; 1: data; 2: CRLF after data; 3: trailers */
    char *content_type, *attributes; /* the answer's, as it gave them (NULL: none) */
    int has_content_type, has_attributes, bad_header;
    Upstream *next, *prev;
};

typedef struct {
    PyObject_HEAD
    int epoll, wake;          /* wake: an eventfd that stops the loop */
    int returned_fd;          /* an eventfd Python watches for connections given back */
    pthread_t thread;
    int running;
    pthread_mutex_t lock;     /* routes, adopted, tallies */
    Route *routes;
    int route_count;
    int *adopted;
    int adopted_count, adopted_cap;
    PyObject *returned;       /* list of (fd, bytes); touched with the GIL held */
    Tally *tallies;           /* MAX_ROUTES * MAX_VARIANTS of them, under `lock` */
    int tally_count;
    PyObject *on_error;
    char key_id[128];
    char secret[256];
    char region[64];
    char signing_date[9];
    unsigned char signing_key[32];
    double timeout, keep_alive, idle;
    EVP_MD_CTX *digest; /* the lane thread's, used again and again */
    EVP_MAC_CTX *mac;
    int mac_ready;
    Client *clients;
    Upstream *upstreams; /* every upstream connection, busy or idle */
    volatile int stopping;
} Lane;

/* ------------------------------------------------------------------ epoll */

/* Watch `fd` for `events`: a system call only when they change (most exchanges change none:
 * a client and a kept connection to a container are both watched for reading throughout). */
static void watch(Lane *lane, int fd, Handle *handle, uint32_t events) {
    if (handle->events == events) return;
    struct epoll_event event = {.events = events, .data.ptr = handle};
    epoll_ctl(lane->epoll, handle->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &event);
    handle->events = events;
}

/* ------------------------------------------------------------------ the request */

typedef struct {
    Slice name, value;
} Header;

typedef struct {
    Slice endpoint;
    Header headers[MAX_HEADERS];
    int count;
    size_t head_size, body_size;
    int close;
} Request;

static int token_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

static int endpoint_name(Slice s) {
    /* [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}: alphanumerics and hyphens, no hyphen at either end */
    if (s.len == 0 || s.len > 63 || s.at[0] == '-' || s.at[s.len - 1] == '-') return 0;
    for (size_t i = 0; i < s.len; i++) {
        char c = s.at[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-'))
            return 0;
    }
    return 1;
}

static const Header *find(const Request *r, const char *name) {
    for (int i = 0; i < r->count; i++)
        if (slice_is(r->headers[i].name, name)) return &r->headers[i];
    return NULL;
}

static int occurrences(const Request *r, Slice name) {
    int n = 0;
    for (int i = 0; i < r->count; i++)
        if (r->headers[i].name.len == name.len &&
            strncasecmp(r->headers[i].name.at, name.at, name.len) == 0)
            n++;
    return n;
}

enum Parsed { MORE = 0, TAKEN = 1, GIVE_BACK = -1 };

/* Where a head (the blank line after it) ends in `data`, looked for in its first `most` bytes;
 * NULL: not there (yet). */
static const char *head_end(const char *data, size_t size, size_t most) {
    for (size_t i = 3; i < size && i < most; i++)
        if (data[i] == '\n' && data[i - 1] == '\r' && data[i - 2] == '\n' && data[i - 3] == '\r')
            return data + i + 1;
    return NULL;
}

/* The header line at `*line` (before the head's `end`) as a name and its value without the
 * white space around it; `*line` moves to the next. -1: no `name: value` line. */
static int header_line(const char **line, const char *end, Header *out) {
    const char *stop = memchr(*line, '\r', (size_t)(end - *line));
    if (stop == NULL || stop[1] != '\n') return -1;
    const char *colon = memchr(*line, ':', (size_t)(stop - *line));
    if (colon == NULL || colon == *line) return -1;
    const char *value = colon + 1, *value_end = stop;
    while (value < value_end && (*value == ' ' || *value == '\t')) value++;
    while (value_end > value && (value_end[-1] == ' ' || value_end[-1] == '\t')) value_end--;
    *out = (Header){{*line, (size_t)(colon - *line)}, {value, (size_t)(value_end - value)}};
    *line = stop + 2;
    return 0;
}

/* The head in `data` (`size` bytes held): MORE, GIVE_BACK, or TAKEN with `r` filled in (the
 * body may still be arriving). Only the strict plain case is TAKEN. */
static int parse_request(const char *data, size_t size, Request *r) {
    const char *end = head_end(data, size, MAX_HEAD);
    if (end == NULL) return size >= MAX_HEAD ? GIVE_BACK : MORE;
    memset(r, 0, sizeof *r);
    r->head_size = (size_t)(end - data);
    static const char prefix[] = "POST /endpoints/";
    static const char suffix[] = "/invocations HTTP/1.1\r\n";
    if (r->head_size < sizeof prefix || memcmp(data, prefix, sizeof prefix - 1) != 0)
        return GIVE_BACK;
    const char *name = data + sizeof prefix - 1;
    const char *slash = memchr(name, '/', (size_t)(end - name));
    if (slash == NULL || (size_t)(end - slash) < sizeof suffix - 1 ||
        memcmp(slash, suffix, sizeof suffix - 1) != 0)
        return GIVE_BACK;
    r->endpoint = (Slice){name, (size_t)(slash - name)};
    if (!endpoint_name(r->endpoint)) return GIVE_BACK;
    const char *line = slash + sizeof suffix - 1;
    while (line < end - 2) {
        Header *h = &r->headers[r->count];
        if (r->count == MAX_HEADERS || header_line(&line, end, h)) return GIVE_BACK;
        for (size_t i = 0; i < h->name.len; i++)
            if (!token_char(h->name.at[i])) return GIVE_BACK;
        for (size_t i = 0; i < h->value.len; i++) { /* printable ASCII and tabs only */
            char c = h->value.at[i];
            if ((c < 0x20 && c != '\t') || c == 0x7f || (unsigned char)c >= 0x80) return GIVE_BACK;
        }
        r->count++;
    }
    /* Headers that change how the request is read or answered: only their plain forms. */
    for (int i = 0; i < r->count; i++) {
        Slice n = r->headers[i].name, v = r->headers[i].value;
        if (slice_is(n, "transfer-encoding") || slice_is(n, "expect") || slice_is(n, "upgrade") ||
            slice_is(n, "x-amz-content-sha256") || slice_is(n, "x-amz-security-token") ||
            slice_is(n, "x-amzn-sagemaker-target-model") ||
            slice_is(n, "x-amzn-sagemaker-target-container-hostname"))
            return GIVE_BACK;
        if (occurrences(r, n) > 1) return GIVE_BACK;
        if (slice_is(n, "connection")) {
            if (slice_is(v, "close"))
                r->close = 1;
            else if (!slice_is(v, "keep-alive"))
                return GIVE_BACK;
        }
        if (slice_is(n, "x-amzn-sagemaker-custom-attributes") && v.len > CUSTOM_ATTRIBUTES_CHARS)
            return GIVE_BACK;
        if (slice_is(n, "x-amzn-sagemaker-inference-id") &&
            (v.len == 0 || v.len > INFERENCE_ID_CHARS))
            return GIVE_BACK;
    }
    const Header *length = find(r, "content-length");
    if (length == NULL || parse_size(length->value, PAYLOAD_BYTES, &r->body_size)) return GIVE_BACK;
    return TAKEN;
}

/* ------------------------------------------------------------------ SigV4 */

/* Fetched once: OpenSSL's one-shot calls look their algorithm up, under a lock, each time. */
static EVP_MD *sha256;
static EVP_MAC *hmac;

static int sha256_hex(Lane *lane, const void *data, size_t size, char out[65]) {
    unsigned char digest[32];
    if (EVP_DigestInit_ex(lane->digest, sha256, NULL) != 1 ||
        EVP_DigestUpdate(lane->digest, data, size) != 1 ||
        EVP_DigestFinal_ex(lane->digest, digest, NULL) != 1)
        return -1;
    hex(digest, 32, out);
    return 0;
}

static int hmac256(Lane *lane, const unsigned char *key, size_t key_size, const void *data,
                   size_t size, unsigned char out[32]) {
    char name[] = OSSL_DIGEST_NAME_SHA2_256;
    OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, name, 0),
                           OSSL_PARAM_construct_end()};
    size_t written = 0;
    /* The digest is set once; after that the context keeps it. */
    if (EVP_MAC_init(lane->mac, key, key_size, lane->mac_ready ? NULL : params) != 1 ||
        EVP_MAC_update(lane->mac, data, size) != 1 ||
        EVP_MAC_final(lane->mac, out, &written, 32) != 1)
        return -1;
    lane->mac_ready = 1;
    return written == 32 ? 0 : -1;
}

static int two_digits(const char *at, int *out) {
    if (at[0] < '0' || at[0] > '9' || at[1] < '0' || at[1] > '9') return -1;
    *out = (at[0] - '0') * 10 + (at[1] - '0');
    return 0;
}

/* `YYYYMMDDTHHMMSSZ` as seconds since the epoch; -1 unless it is one. */
static long long amz_instant(Slice s) {
    if (s.len != 16 || s.at[8] != 'T' || s.at[15] != 'Z') return -1;
    int century, year, month, day, hour, minute, second;
    if (two_digits(s.at, &century) || two_digits(s.at + 2, &year) ||
        two_digits(s.at + 4, &month) || two_digits(s.at + 6, &day) ||
        two_digits(s.at + 9, &hour) || two_digits(s.at + 11, &minute) ||
        two_digits(s.at + 13, &second))
        return -1;
    if (month < 1 || month > 12 || day < 1 || day > 31 || hour > 23 || minute > 59 || second > 59)
        return -1;
    struct tm when = {.tm_year = century * 100 + year - 1900,
                      .tm_mon = month - 1,
                      .tm_mday = day,
                      .tm_hour = hour,
                      .tm_min = minute,
                      .tm_sec = second};
    time_t t = timegm(&when);
    struct tm back;
    gmtime_r(&t, &back);
    if (back.tm_mday != day) return -1; /* no such day (the 31st of a 30-day month ...) */
    return (long long)t;
}

/* Authorization's three parts; -1 unless exactly `AWS4-HMAC-SHA256 Credential=...,
 * SignedHeaders=..., Signature=...`. */
static int parse_authorization(Slice v, Slice *credential, Slice *signed_headers,
                               Slice *signature) {
    static const char algorithm[] = "AWS4-HMAC-SHA256 ";
    if (v.len < sizeof algorithm || memcmp(v.at, algorithm, sizeof algorithm - 1) != 0) return -1;
    const char *at = v.at + sizeof algorithm - 1, *end = v.at + v.len;
    int seen = 0;
    while (at < end) {
        while (at < end && *at == ' ') at++;
        const char *stop = memchr(at, ',', (size_t)(end - at));
        if (stop == NULL) stop = end;
        const char *equal = memchr(at, '=', (size_t)(stop - at));
        if (equal == NULL) return -1;
        Slice name = {at, (size_t)(equal - at)}, value = {equal + 1, (size_t)(stop - equal - 1)};
        if (slice_is(name, "Credential") && !(seen & 1)) {
            *credential = value;
            seen |= 1;
        } else if (slice_is(name, "SignedHeaders") && !(seen & 2)) {
            *signed_headers = value;
            seen |= 2;
        } else if (slice_is(name, "Signature") && !(seen & 4)) {
            *signature = value;
            seen |= 4;
        } else {
            return -1;
        }
        at = stop + 1;
    }
    return seen == 7 ? 0 : -1;
}

/* Whether the request is signed with the lane's key, for its region and `sagemaker`, within
 * the allowed skew: 1 yes; 0 no (Python says why). */
static int signed_by_us(Lane *lane, const Request *r, const char *body) {
    const Header *auth = find(r, "authorization"), *date = find(r, "x-amz-date");
    if (auth == NULL || date == NULL) return 0;
    Slice credential = {0}, names = {0}, signature = {0};
    if (parse_authorization(auth->value, &credential, &names, &signature)) return 0;
    long long when = amz_instant(date->value);
    long long now = (long long)time(NULL);
    if (when < 0 || when < now - CLOCK_SKEW || when > now + CLOCK_SKEW) return 0;
    /* Credential: KEY/DATE/REGION/sagemaker/aws4_request */
    char scope[256];
    size_t key_size = strlen(lane->key_id);
    if (credential.len <= key_size + 1 || memcmp(credential.at, lane->key_id, key_size) != 0 ||
        credential.at[key_size] != '/')
        return 0;
    Slice rest = {credential.at + key_size + 1, credential.len - key_size - 1};
    int written = snprintf(scope, sizeof scope, "%.8s/%s/sagemaker/aws4_request", date->value.at,
                           lane->region);
    if (written <= 0 || (size_t)written != rest.len || memcmp(rest.at, scope, rest.len) != 0)
        return 0;
    if (signature.len != 64) return 0;
    /* The canonical request, the signed headers in the order given (lower-cased). */
    Buf canonical = {0};
    char payload[65];
    int ok = 0, has_host = 0;
    if (sha256_hex(lane, body, r->body_size, payload)) goto done;
    buf_str(&canonical, "POST\n/endpoints/");
    buf_add(&canonical, r->endpoint.at, r->endpoint.len);
    buf_str(&canonical, "/invocations\n\n");
    const char *at = names.at, *end = names.at + names.len;
    Buf listed = {0};
    while (at <= end) {
        const char *stop = memchr(at, ';', (size_t)(end - at));
        if (stop == NULL) stop = end;
        Slice name = {at, (size_t)(stop - at)};
        const Header *h = NULL;
        if (name.len > 0) {
            for (int i = 0; i < r->count; i++)
                if (r->headers[i].name.len == name.len &&
                    strncasecmp(r->headers[i].name.at, name.at, name.len) == 0)
                    h = &r->headers[i];
        }
        if (h == NULL) { /* named as signed, not sent (or an empty name) */
            buf_free(&listed);
            goto done;
        }
        if (slice_is(name, "host")) has_host = 1;
        for (size_t i = 0; i < name.len; i++) {
            char c = (char)tolower((unsigned char)name.at[i]);
            buf_add(&canonical, &c, 1);
            buf_add(&listed, &c, 1);
        }
        buf_str(&canonical, ":");
        /* The value trimmed (it is), its runs of spaces and tabs made one space. */
        int space = 0;
        for (size_t i = 0; i < h->value.len; i++) {
            char c = h->value.at[i];
            if (c == ' ' || c == '\t') {
                space = 1;
                continue;
            }
            if (space) buf_str(&canonical, " ");
            space = 0;
            buf_add(&canonical, &c, 1);
        }
        buf_str(&canonical, "\n");
        if (stop < end) buf_str(&listed, ";");
        at = stop + 1;
    }
    if (!has_host) {
        buf_free(&listed);
        goto done;
    }
    buf_str(&canonical, "\n");
    buf_add(&canonical, buf_at(&listed), buf_size(&listed));
    buf_str(&canonical, "\n");
    buf_add(&canonical, payload, 64);
    buf_free(&listed);
    char digest[65];
    if (sha256_hex(lane, buf_at(&canonical), buf_size(&canonical), digest)) goto done;
    char to_sign[512];
    written = snprintf(to_sign, sizeof to_sign, "AWS4-HMAC-SHA256\n%.16s\n%s\n%s", date->value.at,
                       scope, digest);
    if (written <= 0 || (size_t)written >= sizeof to_sign) goto done;
    if (memcmp(lane->signing_date, date->value.at, 8) != 0) { /* a new day's key */
        unsigned char key[32];
        char seed[300];
        snprintf(seed, sizeof seed, "AWS4%s", lane->secret);
        if (hmac256(lane, (unsigned char *)seed, strlen(seed), date->value.at, 8, key) ||
            hmac256(lane, key, 32, lane->region, strlen(lane->region), key) ||
            hmac256(lane, key, 32, "sagemaker", 9, key) ||
            hmac256(lane, key, 32, "aws4_request", 12, key))
            goto done;
        memcpy(lane->signing_key, key, 32);
        memcpy(lane->signing_date, date->value.at, 8);
        lane->signing_date[8] = 0;
    }
    unsigned char mac[32];
    char expected[65];
    if (hmac256(lane, lane->signing_key, 32, to_sign, (size_t)written, mac)) goto done;
    hex(mac, 32, expected);
    ok = CRYPTO_memcmp(expected, signature.at, 64) == 0;
done:
    buf_free(&canonical);
    return ok;
}

/* ------------------------------------------------------------------ routing */

static Route *route_named(Lane *lane, Slice name) {
    for (int i = 0; i < lane->route_count; i++)
        if (strlen(lane->routes[i].name) == name.len &&
            memcmp(lane->routes[i].name, name.at, name.len) == 0)
            return &lane->routes[i];
    return NULL;
}

/* An instance for the request (by weight, or the variant it names): 0, or -1 to give the
 * request back (Python routes or refuses it). */
static int choose(Lane *lane, const Request *r, Target *target) {
    int found = -1;
    pthread_mutex_lock(&lane->lock);
    Route *route = route_named(lane, r->endpoint);
    const Header *named = find(r, "x-amzn-sagemaker-target-variant");
    Variant *chosen = NULL;
    if (route != NULL && named != NULL) {
        for (int i = 0; i < route->count; i++)
            if (slice_is(named->value, route->variants[i].name) &&
                strlen(route->variants[i].name) == named->value.len)
                chosen = &route->variants[i];
        if (chosen != NULL && chosen->count == 0) chosen = NULL;
    } else if (route != NULL) {
        double total = 0;
        for (int i = 0; i < route->count; i++)
            if (route->variants[i].count > 0 && route->variants[i].weight > 0)
                total += route->variants[i].weight;
        double pick = (double)(next_random() >> 11) / 9007199254740992.0 * total;
        for (int i = 0; i < route->count && total > 0; i++) {
            Variant *v = &route->variants[i];
            if (v->count == 0 || v->weight <= 0) continue;
            chosen = v;
            if (pick < v->weight) break;
            pick -= v->weight;
        }
    }
    if (chosen != NULL) {
        memcpy(target->endpoint, route->name, NAME_CHARS);
        memcpy(target->variant, chosen->name, NAME_CHARS);
        target->instance = chosen->instances[next_random() % (uint64_t)chosen->count];
        found = 0;
    }
    pthread_mutex_unlock(&lane->lock);
    return found;
}

/* ------------------------------------------------------------------ connections */

static void client_close(Lane *lane, Client *c, int give_back);
static void client_answer(Lane *lane, Client *c);
static void upstream_done(Lane *lane, Upstream *u, const char *failure);

static void link_client(Lane *lane, Client *c) {
    c->next = lane->clients;
    if (lane->clients) lane->clients->prev = c;
    lane->clients = c;
}

static void unlink_client(Lane *lane, Client *c) {
    if (c->prev) c->prev->next = c->next;
    else lane->clients = c->next;
    if (c->next) c->next->prev = c->prev;
}

static void link_upstream(Lane *lane, Upstream *u) {
    u->next = lane->upstreams;
    if (lane->upstreams) lane->upstreams->prev = u;
    lane->upstreams = u;
}

static void upstream_free(Lane *lane, Upstream *u) {
    if (u->prev) u->prev->next = u->next;
    else lane->upstreams = u->next;
    if (u->next) u->next->prev = u->prev;
    if (u->fd >= 0) close(u->fd);
    buf_free(&u->out);
    buf_free(&u->in);
    buf_free(&u->body);
    free(u->content_type);
    free(u->attributes);
    free(u);
}

/* The connection goes back to Python with what it sent that is not answered yet. */
static void give_back(Lane *lane, Client *c) {
    epoll_ctl(lane->epoll, EPOLL_CTL_DEL, c->fd, NULL);
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *item = Py_BuildValue("(iy#)", c->fd, buf_at(&c->in), (Py_ssize_t)buf_size(&c->in));
    int failed = item == NULL || PyList_Append(lane->returned, item) != 0;
    Py_XDECREF(item);
    if (failed) {
        PyErr_Clear();
        close(c->fd);
    }
    PyGILState_Release(gil);
    c->fd = -1;
    uint64_t one = 1;
    if (write(lane->returned_fd, &one, sizeof one) < 0) { /* Python reads it: cannot be full */
    }
}

static void client_close(Lane *lane, Client *c, int hand_back) {
    if (c->upstream != NULL) c->upstream->client = NULL; /* its answer is dropped */
    if (hand_back && c->fd >= 0 && !lane->stopping) { /* a stopping server takes none back */
        give_back(lane, c);
    } else if (c->fd >= 0) {
        close(c->fd); /* also leaves the epoll set */
    }
    unlink_client(lane, c);
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

static int flush(int fd, Buf *b) {
    while (buf_size(b) > 0) {
        ssize_t sent = send(fd, buf_at(b), buf_size(b), MSG_NOSIGNAL);
        if (sent < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 1 : -1;
        buf_take(b, (size_t)sent);
    }
    return 0;
}

/* `head` then `extra` in one call, `extra` not copied unless part of it is left: what is not
 * sent (all of it after EAGAIN) stays in `head`. 0: all sent; 1: some left; -1: failed. */
static int send_both(int fd, Buf *head, const char *extra, size_t size) {
    struct iovec parts[2] = {{buf_at(head), buf_size(head)}, {(void *)extra, size}};
    struct msghdr message = {.msg_iov = parts, .msg_iovlen = 2};
    ssize_t sent = sendmsg(fd, &message, MSG_NOSIGNAL);
    if (sent < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
        sent = 0;
    }
    size_t from_head = (size_t)sent < buf_size(head) ? (size_t)sent : buf_size(head);
    buf_take(head, from_head);
    size_t from_extra = (size_t)sent - from_head;
    if (from_extra < size && buf_add(head, extra + from_extra, size - from_extra)) return -1;
    return buf_size(head) > 0 ? 1 : 0;
}

static void client_write(Lane *lane, Client *c) {
    int left = flush(c->fd, &c->out);
    if (left < 0) {
        client_close(lane, c, 0);
        return;
    }
    if (left > 0) {
        if (c->state != WRITING) c->since = now_seconds(); /* a client that reads too slowly */
        c->state = WRITING;
        watch(lane, c->fd, &c->handle, EPOLLOUT | EPOLLRDHUP);
        return;
    }
    if (c->close_after || lane->stopping) {
        client_close(lane, c, 0);
        return;
    }
    c->state = READING;
    c->since = now_seconds();
    if (buf_size(&c->in) == 0) buf_clear(&c->in);
    buf_clear(&c->out);
    watch(lane, c->fd, &c->handle, EPOLLIN | EPOLLRDHUP);
    if (buf_size(&c->in) > 0) client_answer(lane, c); /* a request sent behind the last */
}

static Upstream *upstream_for(Lane *lane, const Instance *instance) {
    for (Upstream *u = lane->upstreams; u != NULL; u = u->next)
        if (u->state == IDLE && u->port == instance->port && strcmp(u->host, instance->host) == 0)
            return u;
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)instance->port)};
    if (inet_pton(AF_INET, instance->host, &address.sin_addr) != 1) return NULL;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    int one = 1, idle = 1, interval = 1, probes = 3, user_timeout = 5000;
    /* As serving/liveness.py: a gone instance's connection is given up within seconds. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof probes);
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
    Upstream *u = calloc(1, sizeof *u);
    if (u == NULL) {
        close(fd);
        return NULL;
    }
    u->handle.kind = UPSTREAM;
    u->fd = fd;
    snprintf(u->host, sizeof u->host, "%s", instance->host);
    u->port = instance->port;
    link_upstream(lane, u);
    int connected = connect(fd, (struct sockaddr *)&address, sizeof address);
    u->state = connected == 0 ? SENDING : CONNECTING;
    if (connected != 0 && errno != EINPROGRESS) {
        upstream_free(lane, u);
        return NULL;
    }
    watch(lane, fd, &u->handle, EPOLLOUT);
    return u;
}

static const char *PASSED[] = {"Content-Type", "Accept", "X-Amzn-SageMaker-Custom-Attributes",
                               "X-Amzn-SageMaker-Inference-Id"};

/* The request read whole: give it back, or send it to an instance. */
static void dispatch(Lane *lane, Client *c, const Request *r) {
    const char *body = buf_at(&c->in) + r->head_size;
    Target target;
    if (!signed_by_us(lane, r, body) || choose(lane, r, &target) != 0) {
        client_close(lane, c, 1);
        return;
    }
    Upstream *u = upstream_for(lane, &target.instance);
    if (u == NULL) {
        client_close(lane, c, 1); /* Python tries, and says why it cannot */
        return;
    }
    char line[128];
    buf_str(&u->out, "POST /invocations HTTP/1.1\r\nHost: ");
    buf_str(&u->out, target.instance.host);
    snprintf(line, sizeof line, "\r\nContent-Length: %zu\r\n", r->body_size);
    buf_str(&u->out, line);
    for (size_t i = 0; i < sizeof PASSED / sizeof *PASSED; i++) {
        const Header *h = find(r, PASSED[i]);
        if (h == NULL) continue;
        buf_str(&u->out, PASSED[i]);
        buf_str(&u->out, ": ");
        buf_add(&u->out, h->value.at, h->value.len);
        buf_str(&u->out, "\r\n");
    }
    buf_str(&u->out, "\r\n");
    int sending = -2; /* not tried: a new connection, sent from its buffer once connected */
    if (u->state == IDLE) {
        /* A kept connection: sent now, the body from where it was read. Only a whole send is
         * taken here; anything else (a part left, a failure) waits for the loop, so that no
         * answer is written from within this call (pipelined requests would recurse). */
        u->state = SENDING;
        sending = send_both(u->fd, &u->out, body, r->body_size);
    } else {
        buf_add(&u->out, body, r->body_size);
    }
    buf_take(&c->in, r->head_size + r->body_size);
    c->close_after = r->close;
    c->target = target;
    c->upstream = u;
    c->state = WAITING;
    c->received = now_seconds();
    u->client = c;
    u->target = target;
    u->started = now_seconds();
    u->deadline = u->started + lane->timeout;
    u->head_done = u->status = u->chunked = u->until_close = u->reusable = 0;
    u->has_content_type = u->has_attributes = u->bad_header = 0;
    free(u->content_type);
    free(u->attributes);
    u->content_type = u->attributes = NULL;
    u->length = u->chunk_left = 0;
    u->chunk_state = 0;
    buf_clear(&u->body);
    if (sending == 0)
        u->state = RECEIVING; /* watched for reading already, as it idled */
    else if (sending != -2)
        watch(lane, u->fd, &u->handle, EPOLLOUT);
}

/* What the client has sent so far: wait, give back, or dispatch. */
static void client_answer(Lane *lane, Client *c) {
    if (lane->stopping) { /* no new exchange once stopping */
        client_close(lane, c, 0);
        return;
    }
    Request r;
    int parsed = parse_request(buf_at(&c->in), buf_size(&c->in), &r);
    if (parsed == GIVE_BACK) {
        client_close(lane, c, 1);
        return;
    }
    if (parsed == MORE || buf_size(&c->in) < r.head_size + r.body_size) return;
    dispatch(lane, c, &r);
}

static void client_readable(Lane *lane, Client *c, uint32_t events) {
    if (c->state == WAITING && (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        client_close(lane, c, 0); /* gone before its answer */
        return;
    }
    if (c->state == WRITING) {
        if (events & (EPOLLERR | EPOLLHUP)) {
            client_close(lane, c, 0);
            return;
        }
        client_write(lane, c);
        return;
    }
    for (;;) {
        if (buf_reserve(&c->in, 65536)) {
            client_close(lane, c, 0);
            return;
        }
        ssize_t got = recv(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len, 0);
        if (got > 0) {
            if (buf_size(&c->in) == 0) c->since = now_seconds();
            c->in.len += (size_t)got;
            if (buf_size(&c->in) > MAX_HEAD + PAYLOAD_BYTES) {
                /* As much as one request may be: read no more until it is answered. */
                if (c->state == WAITING) watch(lane, c->fd, &c->handle, EPOLLRDHUP);
                break;
            }
            continue;
        }
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        /* Closed (or failed) by the client: as uvicorn does, what it sent is not answered. */
        client_close(lane, c, 0);
        return;
    }
    if (c->state == READING) client_answer(lane, c); /* else kept until the answer is written */
}

/* ------------------------------------------------------------------ the container's answer */

static int header_value_ok(Slice v) {
    for (size_t i = 0; i < v.len; i++) {
        unsigned char ch = (unsigned char)v.at[i];
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return 0;
    }
    return 1;
}

/* The answer's head, once whole: 0 parsed (u filled in), 1 more needed, -1 not HTTP. */
static int parse_answer_head(Upstream *u) {
    const char *data = buf_at(&u->in);
    size_t size = buf_size(&u->in);
    const char *end = head_end(data, size, MAX_ANSWER_HEAD);
    if (end == NULL) return size >= MAX_ANSWER_HEAD ? -1 : 1;
    int minor;
    if (size < 12 || memcmp(data, "HTTP/1.", 7) != 0 || (data[7] != '0' && data[7] != '1') ||
        data[8] != ' ')
        return -1;
    minor = data[7] - '0';
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (data[i] < '0' || data[i] > '9') return -1;
        status = status * 10 + (data[i] - '0');
    }
    if (status < 200) return -1; /* no interim answers: nothing asks for them */
    u->status = status;
    int keep = minor == 1, has_length = 0;
    const char *line = memchr(data, '\n', (size_t)(end - data)) + 1;
    while (line < end - 2) {
        Header h;
        if (header_line(&line, end, &h)) return -1;
        Slice name = h.name, v = h.value;
        if (slice_is(name, "content-length")) {
            if (has_length || parse_size(v, (size_t)1 << 40, &u->length)) return -1;
            has_length = 1;
        } else if (slice_is(name, "transfer-encoding")) {
            if (!slice_is(v, "chunked")) return -1;
            u->chunked = 1;
        } else if (slice_is(name, "connection")) {
            if (slice_is(v, "close")) keep = 0;
            else if (slice_is(v, "keep-alive")) keep = 1;
        } else if (slice_is(name, "content-type") && !u->has_content_type) {
            if (!header_value_ok(v) || (u->content_type = strndup(v.at, v.len)) == NULL)
                u->bad_header = 1;
            else
                u->has_content_type = 1;
        } else if (slice_is(name, "x-amzn-sagemaker-custom-attributes") && !u->has_attributes) {
            if (!header_value_ok(v) || (u->attributes = strndup(v.at, v.len)) == NULL)
                u->bad_header = 1;
            else
                u->has_attributes = v.len > 0;
        }
    }
    if (u->chunked && has_length) return -1;
    u->until_close = !u->chunked && !has_length;
    if (status == 204 || status == 304) { /* no body, whatever the head says */
        u->length = 0;
        u->chunked = u->until_close = 0;
    }
    u->reusable = keep && !u->until_close;
    buf_take(&u->in, (size_t)(end - data));
    u->head_done = 1;
    return 0;
}

/* Moves body bytes from u->in to u->body: 0 the answer is whole, 1 more needed, -1 broken. */
static int take_body(Upstream *u) {
    for (;;) {
        if (buf_size(&u->body) > PAYLOAD_BYTES) return 0; /* enough to refuse it */
        size_t held = buf_size(&u->in);
        if (u->until_close) {
            buf_add(&u->body, buf_at(&u->in), held);
            buf_take(&u->in, held);
            return 1; /* the end of the connection ends it */
        }
        if (!u->chunked) {
            size_t part = held < u->length ? held : u->length;
            buf_add(&u->body, buf_at(&u->in), part);
            buf_take(&u->in, part);
            u->length -= part;
            if (u->length == 0) {
                if (buf_size(&u->in) > 0) u->reusable = 0; /* more than it announced */
                return 0;
            }
            return 1;
        }
        const char *data = buf_at(&u->in);
        if (u->chunk_state == 1) {
            size_t part = held < u->chunk_left ? held : u->chunk_left;
            buf_add(&u->body, data, part);
            buf_take(&u->in, part);
            u->chunk_left -= part;
            if (u->chunk_left > 0) return 1;
            u->chunk_state = 2;
            continue;
        }
        const char *stop = held >= 2 ? memmem(data, held, "\r\n", 2) : NULL;
        if (stop == NULL) return held > 4096 ? -1 : 1;
        size_t line = (size_t)(stop - data);
        if (u->chunk_state == 2) {
            if (line != 0) return -1;
            buf_take(&u->in, 2);
            u->chunk_state = 0;
            continue;
        }
        if (u->chunk_state == 3) { /* trailers, up to an empty line */
            buf_take(&u->in, line + 2);
            if (line == 0) {
                if (buf_size(&u->in) > 0) u->reusable = 0;
                return 0;
            }
            continue;
        }
        size_t size = 0, digits = 0;
        for (; digits < line; digits++) {
            char ch = data[digits];
            int value = ch >= '0' && ch <= '9'   ? ch - '0'
                        : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                        : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                                 : -1;
            if (value < 0) break;
            if (size > ((size_t)PAYLOAD_BYTES << 4)) return -1;
            size = size * 16 + (size_t)value;
        }
        if (digits == 0 || (digits < line && data[digits] != ';' && data[digits] != ' '))
            return -1;
        buf_take(&u->in, line + 2);
        u->chunk_left = size;
        u->chunk_state = size == 0 ? 3 : 1;
    }
}

static PyObject *text_or_none(const char *text) {
    if (text == NULL) Py_RETURN_NONE;
    return PyUnicode_DecodeLatin1(text, (Py_ssize_t)strlen(text), NULL);
}

/* The runtime's error for an exchange that did not end in a 2xx (Python spells it), written
 * to the client. */
static void answer_with_error(Lane *lane, Client *c, Upstream *u, const char *failure) {
    double now = now_seconds();
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *reason = text_or_none(failure);
    PyObject *answer = reason == NULL ? NULL : PyObject_CallFunction(
        lane->on_error, "sssiy#Odd", u->target.endpoint, u->target.variant,
        u->target.instance.stream, u->status, buf_at(&u->body), (Py_ssize_t)buf_size(&u->body),
        reason, now - u->started, now - (c != NULL ? c->received : u->started));
    Py_XDECREF(reason);
    int written = 0;
    if (answer != NULL && PyBytes_Check(answer) && c != NULL) {
        buf_add(&c->out, PyBytes_AS_STRING(answer), (size_t)PyBytes_GET_SIZE(answer));
        written = 1;
    }
    if (answer == NULL) PyErr_WriteUnraisable(lane->on_error);
    Py_XDECREF(answer);
    PyGILState_Release(gil);
    if (c == NULL) return;
    if (!written) {
        static const char internal[] =
            "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain; charset=utf-8\r\n"
            "content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error";
        buf_add(&c->out, internal, sizeof internal - 1);
        c->close_after = 1;
    }
    client_write(lane, c);
}

static char http_date[64];
static time_t http_date_at;

static void answer_with_body(Lane *lane, Client *c, Upstream *u) {
    time_t now = time(NULL);
    if (now != http_date_at) {
        struct tm when;
        gmtime_r(&now, &when);
        strftime(http_date, sizeof http_date, "%a, %d %b %Y %H:%M:%S GMT", &when);
        http_date_at = now;
    }
    char id[37], line[128];
    request_id(id);
    Buf *out = &c->out;
    buf_str(out, "HTTP/1.1 200 OK\r\ndate: ");
    buf_str(out, http_date);
    snprintf(line, sizeof line, "\r\ncontent-length: %zu\r\ncontent-type: ", buf_size(&u->body));
    buf_str(out, line);
    buf_str(out, u->has_content_type ? u->content_type : "application/octet-stream");
    buf_str(out, "\r\nx-amzn-invoked-production-variant: ");
    buf_str(out, u->target.variant);
    buf_str(out, "\r\nx-amzn-requestid: ");
    buf_str(out, id);
    if (u->has_attributes) {
        buf_str(out, "\r\nx-amzn-sagemaker-custom-attributes: ");
        buf_str(out, u->attributes);
    }
    buf_str(out, c->close_after ? "\r\nconnection: close\r\n\r\n" : "\r\n\r\n");
    if (send_both(c->fd, out, buf_at(&u->body), buf_size(&u->body)) < 0) {
        client_close(lane, c, 0);
        return;
    }
    client_write(lane, c); /* what is left, or the end of the exchange */
}

static void tally(Lane *lane, const Target *target, double model, double overhead) {
    pthread_mutex_lock(&lane->lock);
    Tally *t = NULL;
    for (int i = 0; i < lane->tally_count && t == NULL; i++)
        if (strcmp(lane->tallies[i].endpoint, target->endpoint) == 0 &&
            strcmp(lane->tallies[i].variant, target->variant) == 0)
            t = &lane->tallies[i];
    if (t == NULL && lane->tally_count < MAX_ROUTES * MAX_VARIANTS) {
        t = &lane->tallies[lane->tally_count++];
        memcpy(t->endpoint, target->endpoint, NAME_CHARS);
        memcpy(t->variant, target->variant, NAME_CHARS);
        t->count = 0;
    }
    if (t != NULL) {
        if (t->count == 0) {
            t->model_sum = t->overhead_sum = 0;
            t->model_low = t->model_high = model;
            t->overhead_low = t->overhead_high = overhead;
        }
        t->count++;
        t->model_sum += model;
        t->overhead_sum += overhead;
        if (model < t->model_low) t->model_low = model;
        if (model > t->model_high) t->model_high = model;
        if (overhead < t->overhead_low) t->overhead_low = overhead;
        if (overhead > t->overhead_high) t->overhead_high = overhead;
    }
    pthread_mutex_unlock(&lane->lock);
}

/* The exchange ended (`failure`: how it failed, NULL: it was answered). */
static void upstream_done(Lane *lane, Upstream *u, const char *failure) {
    Client *c = u->client;
    u->client = NULL;
    if (c != NULL) c->upstream = NULL;
    int ok = failure == NULL && u->status >= 200 && u->status < 300 &&
             buf_size(&u->body) <= PAYLOAD_BYTES && !u->bad_header;
    if (ok) {
        double now = now_seconds(), model = now - u->started;
        double total = now - (c ? c->received : u->started);
        tally(lane, &u->target, (double)llround(model * 1e6),
              (double)llround((total > model ? total - model : 0) * 1e6));
        if (c != NULL) answer_with_body(lane, c, u);
    } else {
        if (failure == NULL && u->bad_header) failure = "its answer has a header that cannot be passed on";
        answer_with_error(lane, c, u, failure);
    }
    int kept = 0;
    if (failure == NULL && u->reusable && buf_size(&u->in) == 0) {
        int idle = 0;
        for (Upstream *o = lane->upstreams; o != NULL; o = o->next)
            if (o->state == IDLE && o->port == u->port && strcmp(o->host, u->host) == 0) idle++;
        kept = idle < KEPT_PER_ADDRESS;
    }
    if (!kept) {
        upstream_free(lane, u);
        return;
    }
    u->state = IDLE;
    u->idle_since = now_seconds();
    buf_clear(&u->body);
    buf_clear(&u->out);
    buf_clear(&u->in);
    watch(lane, u->fd, &u->handle, EPOLLIN | EPOLLRDHUP); /* to see it close */
}

static void upstream_event(Lane *lane, Upstream *u, uint32_t events) {
    if (u->state == IDLE) { /* the container closed it, or sent what nobody asked for */
        char peek;
        ssize_t got = recv(u->fd, &peek, 1, MSG_PEEK | MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return; /* a stale event */
        upstream_free(lane, u);
        return;
    }
    if (u->state == CONNECTING) {
        int error = 0;
        socklen_t size = sizeof error;
        getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &error, &size);
        if (error != 0) {
            upstream_done(lane, u, strerror(error));
            return;
        }
        u->state = SENDING;
    }
    if (u->state == SENDING) {
        int left = flush(u->fd, &u->out);
        if (left < 0) {
            upstream_done(lane, u, strerror(errno));
            return;
        }
        if (left > 0) return;
        u->state = RECEIVING;
        watch(lane, u->fd, &u->handle, EPOLLIN | EPOLLRDHUP);
        return;
    }
    for (;;) {
        if (buf_reserve(&u->in, 65536)) {
            upstream_done(lane, u, "out of memory");
            return;
        }
        ssize_t got = recv(u->fd, u->in.data + u->in.len, u->in.cap - u->in.len, 0);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (got <= 0) {
            if (got == 0 && u->head_done && u->until_close) {
                take_body(u);
                u->reusable = 0;
                upstream_done(lane, u, NULL);
            } else {
                upstream_done(lane, u, got == 0 ? "the connection closed before the answer ended"
                                                : strerror(errno));
            }
            return;
        }
        u->in.len += (size_t)got;
        if (!u->head_done) {
            int head = parse_answer_head(u);
            if (head < 0) {
                upstream_done(lane, u, "its answer is not HTTP");
                return;
            }
            if (head > 0) continue;
        }
        int body = take_body(u);
        if (body < 0) {
            upstream_done(lane, u, "its answer is not HTTP");
            return;
        }
        if (body == 0) {
            if (buf_size(&u->body) > PAYLOAD_BYTES) u->reusable = 0;
            upstream_done(lane, u, NULL);
            return;
        }
    }
}

/* ------------------------------------------------------------------ the loop */

static void adopt_pending(Lane *lane) {
    pthread_mutex_lock(&lane->lock);
    int count = lane->adopted_count;
    int *fds = malloc(sizeof(int) * (size_t)(count ? count : 1));
    if (fds != NULL) memcpy(fds, lane->adopted, sizeof(int) * (size_t)count);
    lane->adopted_count = 0;
    pthread_mutex_unlock(&lane->lock);
    if (fds == NULL) return;
    for (int i = 0; i < count; i++) {
        Client *c = calloc(1, sizeof *c);
        if (c == NULL) {
            close(fds[i]);
            continue;
        }
        int flags = fcntl(fds[i], F_GETFL), one = 1;
        fcntl(fds[i], F_SETFL, flags | O_NONBLOCK); /* the lane never waits on one client */
        setsockopt(fds[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->handle.kind = CLIENT;
        c->fd = fds[i];
        c->state = READING;
        c->since = now_seconds();
        link_client(lane, c);
        watch(lane, c->fd, &c->handle, EPOLLIN | EPOLLRDHUP);
        client_readable(lane, c, EPOLLIN); /* it may have sent already */
    }
    free(fds);
}

static void expire(Lane *lane) {
    double now = now_seconds();
    for (Client *c = lane->clients, *next; c != NULL; c = next) {
        next = c->next;
        if (c->state == WRITING && now - c->since > PARTIAL_SECONDS) {
            client_close(lane, c, 0);
            continue;
        }
        if (c->state != READING) continue;
        if (buf_size(&c->in) == 0 && now - c->since > lane->keep_alive) client_close(lane, c, 0);
        else if (buf_size(&c->in) > 0 && now - c->since > PARTIAL_SECONDS) client_close(lane, c, 0);
    }
    for (Upstream *u = lane->upstreams, *next; u != NULL; u = next) {
        next = u->next;
        if (u->state == IDLE && now - u->idle_since > lane->idle) {
            upstream_free(lane, u);
        } else if (u->state != IDLE && now > u->deadline) {
            char why[96];
            snprintf(why, sizeof why, "no answer within %g seconds", lane->timeout);
            u->reusable = 0;
            upstream_done(lane, u, why);
        }
    }
}

/* Stopping: connections with no exchange under way are closed (as uvicorn closes its idle
 * ones); whether none is left, or the time to wait for them is up. */
static int drained(Lane *lane, double deadline) {
    for (Client *c = lane->clients, *next; c != NULL; c = next) {
        next = c->next;
        if (c->state == READING) client_close(lane, c, 0);
    }
    return lane->clients == NULL || now_seconds() > deadline;
}

static void *run(void *argument) {
    Lane *lane = argument;
    struct epoll_event ready[128];
    Handle wake = {WAKE, 0};
    watch(lane, lane->wake, &wake, EPOLLIN);
    double last = now_seconds(), deadline = 0;
    for (;;) {
        if (lane->stopping) { /* the answers under way are still written */
            if (deadline == 0) deadline = now_seconds() + DRAIN_SECONDS;
            if (drained(lane, deadline)) break;
        }
        int count = epoll_wait(lane->epoll, ready, 128, 250);
        for (int i = 0; i < count; i++) {
            Handle *h = ready[i].data.ptr;
            if (h->kind == WAKE) {
                uint64_t value;
                if (read(lane->wake, &value, sizeof value) < 0) { /* nothing to do */
                }
                adopt_pending(lane);
            }
        }
        /* Events of this batch for a connection freed earlier in it would name freed memory:
         * each connection is handled by looking it up among the live ones. */
        for (int i = 0; i < count; i++) {
            Handle *h = ready[i].data.ptr;
            if (h->kind == CLIENT) {
                for (Client *c = lane->clients; c != NULL; c = c->next)
                    if (&c->handle == h) {
                        client_readable(lane, c, ready[i].events);
                        break;
                    }
            } else if (h->kind == UPSTREAM) {
                for (Upstream *u = lane->upstreams; u != NULL; u = u->next)
                    if (&u->handle == h) {
                        upstream_event(lane, u, ready[i].events);
                        break;
                    }
            }
        }
        double now = now_seconds();
        if (now - last >= 0.25) {
            expire(lane);
            last = now;
        }
    }
    while (lane->clients) client_close(lane, lane->clients, 0);
    while (lane->upstreams) upstream_free(lane, lane->upstreams);
    return NULL;
}

/* ------------------------------------------------------------------ Python's side */

static int copy_text(PyObject *text, char *into, size_t size) {
    Py_ssize_t length;
    const char *data = PyUnicode_AsUTF8AndSize(text, &length);
    if (data == NULL) return -1;
    if ((size_t)length >= size) {
        PyErr_SetString(PyExc_ValueError, "too long for the lane");
        return -1;
    }
    memcpy(into, data, (size_t)length);
    into[length] = 0;
    return 0;
}

static int Lane_init(Lane *self, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"key_id", "secret", "region", "timeout", "keep_alive", "idle",
                            "on_error", NULL};
    PyObject *key_id, *secret, *region, *on_error;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UUUdddO", names, &key_id, &secret, &region,
                                     &self->timeout, &self->keep_alive, &self->idle, &on_error))
        return -1;
    if (copy_text(key_id, self->key_id, sizeof self->key_id) ||
        copy_text(secret, self->secret, sizeof self->secret) ||
        copy_text(region, self->region, sizeof self->region))
        return -1;
    Py_INCREF(on_error);
    self->on_error = on_error;
    self->returned = PyList_New(0);
    self->tallies = calloc(MAX_ROUTES * MAX_VARIANTS, sizeof(Tally));
    self->routes = calloc(MAX_ROUTES, sizeof(Route));
    self->adopted_cap = 64;
    self->adopted = calloc((size_t)self->adopted_cap, sizeof(int));
    if (!self->returned || !self->tallies || !self->routes || !self->adopted) {
        PyErr_NoMemory();
        return -1;
    }
    if (getrandom(rng, sizeof rng, 0) != sizeof rng) rng[0] = (uint64_t)time(NULL) | 1;
    self->digest = EVP_MD_CTX_new();
    self->mac = EVP_MAC_CTX_new(hmac);
    if (self->digest == NULL || self->mac == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    self->epoll = epoll_create1(EPOLL_CLOEXEC);
    self->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->returned_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (self->epoll < 0 || self->wake < 0 || self->returned_fd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (pthread_create(&self->thread, NULL, run, self) != 0) {
        PyErr_SetString(PyExc_OSError, "the lane's thread could not start");
        return -1;
    }
    self->running = 1;
    return 0;
}

static void stop(Lane *self) {
    if (!self->running) return;
    self->stopping = 1;
    uint64_t one = 1;
    if (write(self->wake, &one, sizeof one) < 0) { /* the loop wakes within 250 ms anyway */
    }
    Py_BEGIN_ALLOW_THREADS pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS self->running = 0;
}

static void Lane_dealloc(Lane *self) {
    stop(self);
    if (self->epoll > 0) close(self->epoll);
    if (self->wake > 0) close(self->wake);
    if (self->returned_fd > 0) close(self->returned_fd);
    for (int i = 0; i < self->adopted_count; i++) close(self->adopted[i]);
    free(self->adopted);
    free(self->routes);
    free(self->tallies);
    EVP_MD_CTX_free(self->digest);
    EVP_MAC_CTX_free(self->mac);
    OPENSSL_cleanse(self->secret, sizeof self->secret);
    OPENSSL_cleanse(self->signing_key, sizeof self->signing_key);
    Py_XDECREF(self->on_error);
    Py_XDECREF(self->returned);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Lane_adopt(Lane *self, PyObject *arg) {
    int fd = (int)PyLong_AsLong(arg);
    if (fd < 0 && PyErr_Occurred()) return NULL;
    if (!self->running || self->stopping) {
        PyErr_SetString(PyExc_RuntimeError, "the lane is closed");
        return NULL;
    }
    pthread_mutex_lock(&self->lock);
    if (self->adopted_count == self->adopted_cap) {
        int *more = realloc(self->adopted, sizeof(int) * (size_t)self->adopted_cap * 2);
        if (more == NULL) {
            pthread_mutex_unlock(&self->lock);
            return PyErr_NoMemory();
        }
        self->adopted = more;
        self->adopted_cap *= 2;
    }
    self->adopted[self->adopted_count++] = fd;
    pthread_mutex_unlock(&self->lock);
    uint64_t one = 1;
    if (write(self->wake, &one, sizeof one) < 0) { /* the loop wakes within 250 ms anyway */
    }
    Py_RETURN_NONE;
}

/* set_route(name, variants): variants a list of (name, weight, [(host, port, stream)]); None
 * or an empty list removes the route (the lane then gives that endpoint's requests back). */
static PyObject *Lane_set_route(Lane *self, PyObject *args) {
    PyObject *name, *variants;
    if (!PyArg_ParseTuple(args, "UO", &name, &variants)) return NULL;
    Route route;
    memset(&route, 0, sizeof route);
    if (copy_text(name, route.name, sizeof route.name)) return NULL;
    int remove = variants == Py_None;
    if (!remove) {
        if (!PyList_Check(variants) || PyList_GET_SIZE(variants) > MAX_VARIANTS) {
            PyErr_SetString(PyExc_ValueError, "variants: a list of at most 10");
            return NULL;
        }
        route.count = (int)PyList_GET_SIZE(variants);
        remove = route.count == 0;
        for (int i = 0; i < route.count; i++) {
            Variant *v = &route.variants[i];
            PyObject *vname, *instances;
            if (!PyArg_ParseTuple(PyList_GET_ITEM(variants, i), "UdO!", &vname, &v->weight,
                                  &PyList_Type, &instances) ||
                copy_text(vname, v->name, sizeof v->name))
                return NULL;
            if (PyList_GET_SIZE(instances) > MAX_INSTANCES) {
                PyErr_SetString(PyExc_ValueError, "too many instances for the lane");
                return NULL;
            }
            v->count = (int)PyList_GET_SIZE(instances);
            for (int j = 0; j < v->count; j++) {
                Instance *at = &v->instances[j];
                PyObject *host, *stream;
                if (!PyArg_ParseTuple(PyList_GET_ITEM(instances, j), "UiU", &host, &at->port,
                                      &stream) ||
                    copy_text(host, at->host, sizeof at->host) ||
                    copy_text(stream, at->stream, sizeof at->stream))
                    return NULL;
                struct in_addr parsed;
                if (inet_pton(AF_INET, at->host, &parsed) != 1) {
                    PyErr_SetString(PyExc_ValueError, "an instance's host: not an IPv4 address");
                    return NULL;
                }
            }
        }
    }
    pthread_mutex_lock(&self->lock);
    Route *known = route_named(self, (Slice){route.name, strlen(route.name)});
    int failed = 0;
    if (remove) {
        if (known != NULL) *known = self->routes[--self->route_count];
    } else if (known != NULL) {
        *known = route;
    } else if (self->route_count < MAX_ROUTES) {
        self->routes[self->route_count++] = route;
    } else {
        failed = 1;
    }
    pthread_mutex_unlock(&self->lock);
    if (failed) {
        PyErr_SetString(PyExc_OverflowError, "the lane holds no more routes");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *swap_list(PyObject **list) {
    PyObject *fresh = PyList_New(0);
    if (fresh == NULL) return NULL;
    PyObject *taken = *list;
    *list = fresh;
    return taken;
}

/* The tallies since the last call, each (endpoint, variant, count, (model sum, least,
 * greatest), (overhead sum, least, greatest)); they start again from nothing. */
static PyObject *Lane_drain(Lane *self, PyObject *unused) {
    PyObject *list = PyList_New(0);
    if (list == NULL) return NULL;
    pthread_mutex_lock(&self->lock);
    for (int i = 0; i < self->tally_count; i++) {
        Tally *t = &self->tallies[i];
        if (t->count == 0) continue;
        PyObject *item = Py_BuildValue("(ssL(ddd)(ddd))", t->endpoint, t->variant, t->count,
                                       t->model_sum, t->model_low, t->model_high,
                                       t->overhead_sum, t->overhead_low, t->overhead_high);
        if (item == NULL || PyList_Append(list, item) != 0) {
            Py_XDECREF(item);
            Py_CLEAR(list);
            break;
        }
        Py_DECREF(item);
        t->count = 0;
    }
    pthread_mutex_unlock(&self->lock);
    return list;
}

/* The list is only touched with the GIL held (by this thread or the lane's). */

static PyObject *Lane_returned(Lane *self, PyObject *unused) {
    uint64_t value;
    if (read(self->returned_fd, &value, sizeof value) < 0) { /* none yet */
    }
    return swap_list(&self->returned);
}

static PyObject *Lane_fileno(Lane *self, PyObject *unused) {
    return PyLong_FromLong(self->returned_fd);
}

static PyObject *Lane_close(Lane *self, PyObject *unused) {
    stop(self);
    Py_RETURN_NONE;
}

static PyMethodDef Lane_methods[] = {
    {"adopt", (PyCFunction)Lane_adopt, METH_O,
     "adopt(fd): the lane answers the connection from now on (it owns the descriptor)."},
    {"set_route", (PyCFunction)Lane_set_route, METH_VARARGS,
     "set_route(endpoint, [(variant, weight, [(host, port, stream)])] or None)."},
    {"drain", (PyCFunction)Lane_drain, METH_NOARGS,
     "The answered invocations since the last call, summed per variant."},
    {"returned", (PyCFunction)Lane_returned, METH_NOARGS,
     "Connections given back since the last call: (fd, bytes received and not answered)."},
    {"fileno", (PyCFunction)Lane_fileno, METH_NOARGS,
     "A descriptor readable when connections have been given back."},
    {"close", (PyCFunction)Lane_close, METH_NOARGS, "Stop the lane, closing its connections."},
    {NULL, NULL, 0, NULL}};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "openmaker.api._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Lane(key_id, secret, region, timeout, keep_alive, idle, on_error)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_methods = Lane_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_lane",
                                    "InvokeEndpoint's plain case, answered in C.", -1, NULL};

PyMODINIT_FUNC PyInit__lane(void) {
    if (sha256 == NULL) sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (hmac == NULL) hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    if (sha256 == NULL || hmac == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL offers no SHA-256 or HMAC here");
        return NULL;
    }
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&LaneType);
    if (PyModule_AddObject(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(&LaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
