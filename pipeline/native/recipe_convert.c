/* The common case of pipeline.prepare_worker.convert_lines in C: a line that is a clean
 * XiaChuFang recipe becomes its training line, digest and split key here; every other line
 * (any doubt at all: invalid or unusual JSON, a string that cleaning would change, a step that
 * starts with a number, a record that is rejected, ...) is marked FALLBACK and handled by the
 * Python code, which stays the definition. tests/test_native_convert.py checks that both give
 * the same bytes on real, synthetic and fuzzed lines.
 *
 * Built by pipeline/native/__init__.py with the system C compiler and loaded through ctypes
 * (no Python headers needed). Plain C99; no allocation except one scratch buffer a call.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blake2b64.h"
#include "json_scan.h"

#define FALLBACK 0
#define KEEP 1
#define TOO_LONG 2
#define SEEN 3 /* this process made the training line of the same dish and ingredients before */
#define MAX_ITEMS 4096
#define MAX_LINE (1 << 20) /* longer lines go to Python: C's buffers stay small */
#define NFORMS_MAX 16

/* splitmix64 finaliser: prepare_worker.mix */
uint64_t rc_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* ---- the digests this process kept lately (prepare_worker._cache): a repeat is SEEN, so
 * its line is neither formatted nor sent; cleared when full, like the Python set -------- */
#define CACHE_SIZE (1 << 14)
#define CACHE_SLOTS (1 << 16)
static uint64_t cache_slot[CACHE_SLOTS];
static long cache_count;
static int cache_has_zero;

void rc_cache_clear(void) {
    memset(cache_slot, 0, sizeof cache_slot);
    cache_count = 0;
    cache_has_zero = 0;
}

static int cache_has(uint64_t d) {
    if (d == 0) return cache_has_zero;
    for (uint64_t i = rc_mix(d) & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        if (cache_slot[i] == d) return 1;
        if (cache_slot[i] == 0) return 0;
    }
}

static void cache_add(uint64_t d) {
    if (cache_count >= CACHE_SIZE) rc_cache_clear();
    cache_count++;
    if (d == 0) { cache_has_zero = 1; return; }
    uint64_t i = rc_mix(d) & (CACHE_SLOTS - 1);
    while (cache_slot[i] != 0) i = (i + 1) & (CACHE_SLOTS - 1);
    cache_slot[i] = d;
}

/* ---- parameters, set once a process by rc_init --------------------------------------- */
typedef struct { const uint8_t *p; size_t n; } bytes_t;

static struct {
    const uint8_t *ok;        /* 65536 flags: code point kept as is by clean_text (space excluded) */
    const uint8_t *digit;     /* 65536 flags: a decimal digit (Python's \\d) */
    uint64_t salt;            /* mix(seed), or 0 for seed 0 */
    int64_t max_len, base_chars;
    bytes_t prefix, middle, suffix, ing_head, ing_sep, steps_head, step_sep;  /* JSON-escaped */
    int64_t ing_head_chars, ing_sep_chars, steps_head_chars;
    int nforms;
    bytes_t head[NFORMS_MAX], tail[NFORMS_MAX];  /* JSON-escaped question text around the name */
    int64_t head_chars[NFORMS_MAX], tail_chars[NFORMS_MAX];
    size_t fixed_out;  /* bytes of a training line besides its escaped strings and step numbers */
} P;

static bytes_t mkb(const char *p, size_t n) { bytes_t b = {(const uint8_t *)p, n}; return b; }

/* texts: prefix, middle, suffix, ing_head, ing_sep, steps_head, step_sep, then nforms heads,
 * then nforms tails; chars: ing_head, ing_sep, steps_head, then heads, then tails. */
int rc_init(const uint8_t *ok, const uint8_t *digit, uint64_t salt, int64_t max_len, int64_t base_chars,
            int nforms, const char **texts, const size_t *lens, const int64_t *chars) {
    if (nforms < 1 || nforms > NFORMS_MAX) return -1;
    rc_cache_clear();
    P.ok = ok;
    P.digit = digit;
    P.salt = salt;
    P.max_len = max_len;
    P.base_chars = base_chars;
    P.nforms = nforms;
    P.prefix = mkb(texts[0], lens[0]);
    P.middle = mkb(texts[1], lens[1]);
    P.suffix = mkb(texts[2], lens[2]);
    P.ing_head = mkb(texts[3], lens[3]);
    P.ing_sep = mkb(texts[4], lens[4]);
    P.steps_head = mkb(texts[5], lens[5]);
    P.step_sep = mkb(texts[6], lens[6]);
    P.ing_head_chars = chars[0];
    P.ing_sep_chars = chars[1];
    P.steps_head_chars = chars[2];
    size_t longest = 0;
    for (int i = 0; i < nforms; i++) {
        P.head[i] = mkb(texts[7 + i], lens[7 + i]);
        P.tail[i] = mkb(texts[7 + nforms + i], lens[7 + nforms + i]);
        P.head_chars[i] = chars[3 + i];
        P.tail_chars[i] = chars[3 + nforms + i];
        if (lens[7 + i] + lens[7 + nforms + i] > longest) longest = lens[7 + i] + lens[7 + nforms + i];
    }
    P.fixed_out = P.prefix.n + P.middle.n + P.suffix.n + 4 + longest + P.ing_head.n + P.steps_head.n;
    return 0;
}

/* ---- one line ---------------------------------------------------------------------------- */
/* A decoded string: in the line itself when it has no escape, else in the scratch buffer.
 * clean: clean_text leaves it as it is and it is not empty; esc: it contains " or \\. */
typedef struct { const uint8_t *p; long n; long chars; int clean, esc; } str_t;

enum { K_OTHER, K_KEYWORDS, K_NAME, K_DISH, K_DESCRIPTION, K_AUTHOR, K_INGREDIENTS, K_STEPS };

static int key_kind(const uint8_t *k, long n) {
#define IS(s) (n == (long)sizeof(s) - 1 && memcmp(k, s, n) == 0)
    if (IS("keywords")) return K_KEYWORDS;
    if (IS("name")) return K_NAME;
    if (IS("dish")) return K_DISH;
    if (IS("description")) return K_DESCRIPTION;
    if (IS("author")) return K_AUTHOR;
    if (IS("recipeIngredient")) return K_INGREDIENTS;
    if (IS("recipeInstructions")) return K_STEPS;
    return K_OTHER;
#undef IS
}

typedef struct {
    uint8_t *scratch;  /* decoded strings go here, one after another */
    long used;
    int seen;          /* bit per key kind */
    int has_kw0, has_name, has_dish;
    str_t kw0, name, dish;
    int n_ing, n_step;
    str_t ing[MAX_ITEMS], step[MAX_ITEMS], sorted[MAX_ITEMS];
} rec_t;

/* At a '"' (after white space): read a string the record uses, validating it like
 * read_string and noting what clean_chars would say of it on the way. */
static int take_string(cur_t *c, rec_t *r, str_t *s) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '"') return -1;
    const uint8_t *start = c->p + 1, *p = start, *end = c->end;
    uint8_t *out = NULL; /* set at the first escape: from there on the string is copied */
    long n = 0, chars = 0;
    int clean = 1, prev_space = 1, esc = 0; /* prev_space = 1: no leading space */
    for (;;) {
        if (p >= end) return -1;
        uint8_t b = *p;
        int cp;
        if (b < 0x80) {
            if (b == '"') break;
            if (b != '\\') {
                if (b < 0x20) return -1;
                if (b == ' ') { if (prev_space) clean = 0; prev_space = 1; }
                else { prev_space = 0; if (!P.ok[b]) clean = 0; }
                chars++;
                if (out) out[n++] = b;
                p++;
                continue;
            }
            if (!out) { out = r->scratch + r->used; n = p - start; memcpy(out, start, n); }
            int len = read_escape(p, end, &cp);
            if (len < 0) return -1;
            p += len;
            if (cp == '"' || cp == '\\') esc = 1;
            if (cp < 0x80) out[n++] = (uint8_t)cp;
            else if (cp < 0x800) { out[n++] = 0xC0 | (cp >> 6); out[n++] = 0x80 | (cp & 0x3F); }
            else { out[n++] = 0xE0 | (cp >> 12); out[n++] = 0x80 | ((cp >> 6) & 0x3F); out[n++] = 0x80 | (cp & 0x3F); }
        } else {
            int len = read_utf8(p, end, &cp);
            if (len < 0) return -1;
            if (out) { memcpy(out + n, p, len); n += len; }
            p += len;
        }
        /* a code point from an escape or a multi-byte sequence */
        chars++;
        if (cp == ' ') { if (prev_space) clean = 0; prev_space = 1; }
        else { prev_space = 0; if (!P.ok[cp]) clean = 0; }
    }
    if (prev_space) clean = 0; /* empty, or a trailing space */
    c->p = p + 1;
    if (out) { s->p = out; s->n = n; r->used += n; }
    else { s->p = start; s->n = p - start; }
    s->chars = chars;
    s->clean = clean;
    s->esc = esc;
    return 0;
}

static int is_null(cur_t *c) {
    skip_ws(c);
    if ((size_t)(c->end - c->p) >= 4 && memcmp(c->p, "null", 4) == 0) { c->p += 4; return 1; }
    return 0;
}

/* a JSON array of strings (at most MAX_ITEMS), each decoded into the scratch buffer */
static int take_string_list(cur_t *c, rec_t *r, str_t *items, int *count) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '[') return -1;
    c->p++;
    *count = 0;
    skip_ws(c);
    if (c->p < c->end && *c->p == ']') { c->p++; return 0; }
    for (;;) {
        if (*count >= MAX_ITEMS || take_string(c, r, &items[*count]) < 0) return -1;
        (*count)++;
        skip_ws(c);
        if (c->p >= c->end) return -1;
        if (*c->p == ',') { c->p++; continue; }
        if (*c->p == ']') { c->p++; return 0; }
        return -1;
    }
}

static int parse_record(cur_t *c, rec_t *r) {
    skip_ws(c);
    if (c->p >= c->end || *c->p != '{') return -1;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') return -1;  /* {}: missing fields */
    for (;;) {
        skip_ws(c);
        if (c->p >= c->end || *c->p != '"') return -1;
        const uint8_t *k = c->p + 1;
        if (skip_string(c) < 0) return -1;
        long kn = (long)(c->p - 1 - k);
        int kind = memchr(k, '\\', kn) ? -1 : key_kind(k, kn);
        if (kind < 0) return -1;  /* an escaped key: leave it to Python */
        if (kind != K_OTHER) {
            if (r->seen & (1 << kind)) return -1;  /* a repeated key */
            r->seen |= 1 << kind;
        }
        skip_ws(c);
        if (c->p >= c->end || *c->p != ':') return -1;
        c->p++;
        switch (kind) {
            case K_KEYWORDS:
                if (is_null(c)) break;
                skip_ws(c);
                if (c->p >= c->end || *c->p != '[') return -1;
                c->p++;
                skip_ws(c);
                if (c->p < c->end && *c->p == ']') { c->p++; break; }
                if (take_string(c, r, &r->kw0) < 0) return -1;
                r->has_kw0 = 1;
                for (;;) {
                    skip_ws(c);
                    if (c->p >= c->end) return -1;
                    if (*c->p == ']') { c->p++; break; }
                    if (*c->p != ',') return -1;
                    c->p++;
                    if (skip_value(c, 1) < 0) return -1;
                }
                break;
            case K_NAME:
            case K_DISH:
                if (is_null(c)) break;
                if (take_string(c, r, kind == K_NAME ? &r->name : &r->dish) < 0) return -1;
                if (kind == K_NAME) r->has_name = 1; else r->has_dish = 1;
                break;
            case K_DESCRIPTION:
            case K_AUTHOR:
                if (is_null(c)) break;
                skip_ws(c);
                if (c->p >= c->end || *c->p != '"' || skip_string(c) < 0) return -1;
                break;
            case K_INGREDIENTS:
                if (take_string_list(c, r, r->ing, &r->n_ing) < 0) return -1;
                break;
            case K_STEPS:
                if (take_string_list(c, r, r->step, &r->n_step) < 0) return -1;
                break;
            default:
                if (skip_value(c, 1) < 0) return -1;
        }
        skip_ws(c);
        if (c->p >= c->end) return -1;
        if (*c->p == ',') { c->p++; continue; }
        if (*c->p == '}') { c->p++; break; }
        return -1;
    }
    skip_ws(c);
    if (c->p != c->end) return -1;
    if (!(r->seen & (1 << K_INGREDIENTS)) || !(r->seen & (1 << K_STEPS))) return -1;
    return 0;
}

/* The code point at s.p[*i] of a string take_string validated (json_scan.h's decoder); *i
 * moves past it. */
static inline int utf8_next(str_t s, long *i) {
    int cp = s.p[*i];
    if (cp < 0x80) { (*i)++; return cp; }
    *i += read_utf8(s.p + *i, s.p + s.n, &cp);
    return cp;
}

/* Code points of a string that clean_text leaves unchanged and that is not empty, else -1. */
static long clean_chars(str_t s) {
    if (s.n == 0 || s.p[0] == ' ' || s.p[s.n - 1] == ' ') return -1;
    long i = 0, chars = 0;
    int prev_space = 0;
    while (i < s.n) {
        if (s.p[i] < 0x80) {
            uint8_t b = s.p[i++];
            if (b == ' ') {
                if (prev_space) return -1;
                prev_space = 1;
            } else {
                if (!P.ok[b]) return -1;
                prev_space = 0;
            }
        } else {
            if (!P.ok[utf8_next(s, &i)]) return -1;
            prev_space = 0;
        }
        chars++;
    }
    return chars;
}

static str_t strip_spaces(str_t s) {
    while (s.n > 0 && s.p[0] == ' ') { s.p++; s.n--; }
    while (s.n > 0 && s.p[s.n - 1] == ' ') s.n--;
    return s;
}

/* A name that .lower() could turn into "unknown": 7 ASCII letters or KELVIN SIGN (U+212A). */
static int maybe_unknown(str_t s) {
    static const char want[] = "unknown";
    long i = 0;
    int k = 0;
    while (i < s.n) {
        if (k >= 7) return 0;
        uint8_t b = s.p[i];
        if (b < 0x80) {
            if ((b | 0x20) != (uint8_t)want[k]) return 0;
            i++;
        } else if (i + 3 <= s.n && b == 0xE2 && s.p[i + 1] == 0x84 && s.p[i + 2] == 0xAA) {
            if (want[k] != 'k') return 0;
            i += 3;
        } else {
            return 0;
        }
        k++;
    }
    return k == 7;
}

static int ends_with(str_t s, const char *suffix) {
    long n = (long)strlen(suffix);
    return s.n >= n && memcmp(s.p + s.n - n, suffix, n) == 0;
}

/* pipeline.recipe_format.dish_name for the simple cases; n < 0: leave it to Python */
static str_t dish_name(rec_t *r) {
    str_t none = {NULL, -1, 0, 0, 0};
    if (r->has_kw0) {
        str_t k = strip_spaces(r->kw0);
        if (k.n > 0) {
            static const char *suffixes[] = {"\xe7\x9a\x84\xe5\x81\x9a\xe6\xb3\x95",  /* 的做法 */
                                             "\xe7\x9a\x84\xe5\xae\xb6\xe5\xb8\xb8\xe5\x81\x9a\xe6\xb3\x95",  /* 的家常做法 */
                                             "\xe7\x9a\x84\xe7\xae\x80\xe5\x8d\x95\xe5\x81\x9a\xe6\xb3\x95"}; /* 的简单做法 */
            for (int i = 0; i < 3; i++)
                if (ends_with(k, suffixes[i])) { k.n -= (long)strlen(suffixes[i]); break; }
            return k.n > 0 ? k : none;
        }
    }
    str_t cands[2];
    int have[2] = {r->has_dish, r->has_name};
    cands[0] = r->dish;
    cands[1] = r->name;
    for (int i = 0; i < 2; i++) {
        if (!have[i]) continue;
        str_t v = strip_spaces(cands[i]);
        if (v.n > 0) return v;  /* "Unknown" (skipped by Python) goes to Python as a name */
    }
    return none;
}

/* Whether recipe_format._STEP_NUMBER, ^\s*(?:第?\d+\s*[.、:：)）步]\s*|[①-⑳]\s*), matches
 * at the start of a clean step (no whitespace but single inner spaces): format_answer would
 * strip a number. */
static int step_number(str_t s) {
    long i = 0;
    int cp = utf8_next(s, &i);
    if (cp >= 0x2460 && cp <= 0x2473) return 1;  /* ①-⑳ */
    if (cp == 0x7B2C) {                          /* 第 */
        if (i >= s.n) return 0;
        cp = utf8_next(s, &i);
    }
    if (!P.digit[cp]) return 0;
    while (i < s.n) {
        long j = i;
        cp = utf8_next(s, &j);
        if (!P.digit[cp]) break;
        i = j;
    }
    if (i < s.n && s.p[i] == ' ') i++;
    if (i >= s.n) return 0;
    cp = utf8_next(s, &i);
    return cp == '.' || cp == 0x3001 || cp == ':' || cp == 0xFF1A || cp == ')' || cp == 0xFF09 || cp == 0x6B65;
}

static int cmp_str(const void *a, const void *b) {
    const str_t *x = a, *y = b;
    long n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->p, y->p, n);
    if (c) return c;
    return (x->n > y->n) - (x->n < y->n);
}

static inline uint8_t *put(uint8_t *o, bytes_t b) { memcpy(o, b.p, b.n); return o + b.n; }

static uint8_t *put_escaped(uint8_t *o, str_t s) {
    if (!s.esc) { memcpy(o, s.p, s.n); return o + s.n; }
    const uint8_t *p = s.p, *end = s.p + s.n;
    while (p < end) {
        const uint8_t *q = p;
        while (q < end && *q != '"' && *q != '\\') q++;
        memcpy(o, p, q - p);
        o += q - p;
        if (q < end) { *o++ = '\\'; *o++ = *q++; }
        p = q;
    }
    return o;
}

static int digits(long n) { int d = 1; while (n >= 10) { n /= 10; d++; } return d; }

/* One line -> status; for KEEP the training line is written at *out. */
static int convert_one(const uint8_t *line, size_t len, rec_t *r, uint8_t *out, size_t *out_len,
                       uint64_t *digest, uint64_t *key, int64_t *chars_out) {
    cur_t c = {line, line + len};
    r->used = 0;
    r->seen = 0;
    r->has_kw0 = r->has_name = r->has_dish = 0;
    r->n_ing = r->n_step = 0;
    if (parse_record(&c, r) < 0) return FALLBACK;
    if (r->n_ing == 0 || r->n_step == 0) return FALLBACK;
    str_t name = dish_name(r);
    if (name.n < 0 || maybe_unknown(name)) return FALLBACK;
    long name_chars = clean_chars(name);
    if (name_chars < 0) return FALLBACK;
    int64_t answer = P.ing_head_chars + P.steps_head_chars + (int64_t)(r->n_ing - 1) * P.ing_sep_chars;
    for (int i = 0; i < r->n_ing; i++) {
        if (!r->ing[i].clean) return FALLBACK;
        answer += r->ing[i].chars;
    }
    for (int i = 0; i < r->n_step; i++) {
        if (!r->step[i].clean || step_number(r->step[i])) return FALLBACK;  /* or a number to strip */
        answer += r->step[i].chars + 3 + digits(i + 1);  /* "\n" + number + ". " */
    }
    /* fingerprint: name, then the sorted ingredients, joined by \x1f */
    str_t *sorted = r->sorted;
    memcpy(sorted, r->ing, sizeof(str_t) * r->n_ing);
    if (r->n_ing > 32) qsort(sorted, r->n_ing, sizeof(str_t), cmp_str);
    else
        for (int i = 1; i < r->n_ing; i++) {  /* insertion sort: few ingredients */
            str_t x = sorted[i];
            int j = i - 1;
            while (j >= 0 && cmp_str(&sorted[j], &x) > 0) { sorted[j + 1] = sorted[j]; j--; }
            sorted[j + 1] = x;
        }
    uint8_t *fp = r->scratch + r->used, *f = fp;
    memcpy(f, name.p, name.n);
    f += name.n;
    for (int i = 0; i < r->n_ing; i++) {
        *f++ = 0x1f;
        memcpy(f, sorted[i].p, sorted[i].n);
        f += sorted[i].n;
    }
    *digest = rc_blake2b64(fp, f - fp);
    *key = rc_mix(*digest ^ P.salt);
    if (cache_has(*digest)) return SEEN;
    int form = (int)((*key >> 7) % (uint64_t)P.nforms);
    int64_t total = P.base_chars + P.head_chars[form] + name_chars + P.tail_chars[form] + answer;
    *chars_out = total;
    if (total > P.max_len) return TOO_LONG;
    cache_add(*digest);
    uint8_t *o = out;
    o = put(o, P.prefix);
    *o++ = '"';
    o = put(o, P.head[form]);
    o = put_escaped(o, name);
    o = put(o, P.tail[form]);
    *o++ = '"';
    o = put(o, P.middle);
    *o++ = '"';
    o = put(o, P.ing_head);
    for (int i = 0; i < r->n_ing; i++) {
        if (i) o = put(o, P.ing_sep);
        o = put_escaped(o, r->ing[i]);
    }
    o = put(o, P.steps_head);
    for (int i = 0; i < r->n_step; i++) {
        o = put(o, P.step_sep);
        char num[24];
        int d = digits(i + 1);
        long v = i + 1;
        for (int k = d - 1; k >= 0; k--) { num[k] = (char)('0' + v % 10); v /= 10; }
        memcpy(o, num, d);
        o += d;
        *o++ = '.';
        *o++ = ' ';
        o = put_escaped(o, r->step[i]);
    }
    *o++ = '"';
    o = put(o, P.suffix);
    *out_len = (size_t)(o - out);
    return KEEP;
}

/* Lines in data[0:len], counted like bytes.split(b"\\n") less a trailing empty piece. */
long rc_count_lines(const uint8_t *data, size_t len) {
    long n = 0;
    const uint8_t *p = data, *end = data + len;
    while (p < end) {
        const uint8_t *nl = memchr(p, '\n', end - p);
        n++;
        if (!nl) break;
        p = nl + 1;
    }
    return n;
}

/* Convert the lines of data[0:len] (split at \n like bytes.split; a last line without \n
 * counts; a trailing \n does not start another). Per line: status, start and end in data;
 * for KEEP and TOO_LONG also digest, split key and conversation length in characters; for
 * KEEP its training line ends at out_end in out. Stops early when out could overflow.
 * SEEN lines have digest and key only. Returns the number of lines done (*out_used: bytes of
 * out), or -1 without memory. */
long rc_convert(const uint8_t *data, size_t len, long max_lines, uint8_t *status, uint64_t *starts,
                uint64_t *ends, uint64_t *digest, uint64_t *key, int64_t *chars, uint64_t *out_end,
                uint8_t *out, size_t out_cap, size_t *out_used) {
    static rec_t *r;  /* kept between calls (a process converts one block at a time) */
    static size_t scratch_cap;
    long n = 0;
    size_t pos = 0, o = 0;
    if (!r) {
        r = calloc(1, sizeof(rec_t));
        if (!r) return -1;
    }
    while (pos < len && n < max_lines) {
        const uint8_t *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len;
        size_t line_len = end - pos;
        if (line_len > MAX_LINE) {
            status[n] = FALLBACK;
            starts[n] = pos;
            ends[n] = end;
            out_end[n] = o;
            n++;
            pos = nl ? end + 1 : len;
            continue;
        }
        if (o + P.fixed_out + 6 * line_len + 16 > out_cap) break;
        /* decoded strings are no longer than the line; the fingerprint repeats name and
           ingredients with a separator each */
        if (3 * line_len + 64 > scratch_cap) {
            size_t cap = 6 * line_len + 64 > 65536 ? 6 * line_len + 64 : 65536;
            uint8_t *grown = realloc(r->scratch, cap);
            if (!grown) return -1;
            r->scratch = grown;
            scratch_cap = cap;
        }
        size_t wrote = 0;
        int st = convert_one(data + pos, line_len, r, out + o, &wrote, &digest[n], &key[n], &chars[n]);
        status[n] = (uint8_t)st;
        starts[n] = pos;
        ends[n] = end;
        if (st == KEEP) o += wrote;
        out_end[n] = o;
        n++;
        pos = nl ? end + 1 : len;
    }
    *out_used = o;
    return n;
}
