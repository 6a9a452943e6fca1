/* A strict JSON scanner for one corpus line, header-only (its helpers are inlined into the
 * converter's hot loop): every function returns -1 where orjson or Python's json might read
 * the text differently, and the converter then leaves the line to Python. */
#ifndef RECIPE_JSON_SCAN_H
#define RECIPE_JSON_SCAN_H
#include <stdint.h>
#include <string.h>

#define MAX_DEPTH 64

typedef struct { const uint8_t *p, *end; } cur_t;

static inline void skip_ws(cur_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\r' || *c->p == '\n')) c->p++;
}

static int hexval(uint8_t b) {
    if (b >= '0' && b <= '9') return b - '0';
    if (b >= 'a' && b <= 'f') return b - 'a' + 10;
    if (b >= 'A' && b <= 'F') return b - 'A' + 10;
    return -1;
}

/* The escape at p (p[0] == '\\'): its code point in *cp and its length, or -1 (escaped
 * surrogates included: Python's cleaning would drop them). */
static int read_escape(const uint8_t *p, const uint8_t *end, int *cp) {
    if (p + 1 >= end) return -1;
    switch (p[1]) {
        case '"': *cp = '"'; return 2;
        case '\\': *cp = '\\'; return 2;
        case '/': *cp = '/'; return 2;
        case 'b': *cp = '\b'; return 2;
        case 'f': *cp = '\f'; return 2;
        case 'n': *cp = '\n'; return 2;
        case 'r': *cp = '\r'; return 2;
        case 't': *cp = '\t'; return 2;
        case 'u': {
            if (p + 6 > end) return -1;
            int v = 0;
            for (int i = 2; i < 6; i++) {
                int h = hexval(p[i]);
                if (h < 0) return -1;
                v = v * 16 + h;
            }
            if (v >= 0xD800 && v <= 0xDFFF) return -1;
            *cp = v;
            return 6;
        }
        default: return -1;
    }
}

/* The 2- or 3-byte UTF-8 sequence at p: its code point in *cp and its length, or -1 for
 * invalid UTF-8 (overlong forms, surrogates) and for 4-byte sequences (emoji and the like,
 * which Python's cleaning drops). */
static inline int read_utf8(const uint8_t *p, const uint8_t *end, int *cp) {
    uint8_t b = p[0];
    if (b >= 0xE0 && b <= 0xEF) {
        if (p + 3 > end || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return -1;
        int v = ((b & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) return -1;
        *cp = v;
        return 3;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        if (p + 2 > end || (p[1] & 0xC0) != 0x80) return -1;
        *cp = ((b & 0x1F) << 6) | (p[1] & 0x3F);
        return 2;
    }
    return -1;
}

/* At a '"': step over a string the record does not use, validating it; 0, or -1. */
static int skip_string(cur_t *c) {
    const uint8_t *p = c->p + 1, *end = c->end;
    int cp, len;
    for (;;) {
        if (p >= end) return -1;
        uint8_t b = *p;
        if (b == '"') { c->p = p + 1; return 0; }
        if (b < 0x20) return -1;
        if (b < 0x80 && b != '\\') { p++; continue; }
        len = b == '\\' ? read_escape(p, end, &cp) : read_utf8(p, end, &cp);
        if (len < 0) return -1;
        p += len;
    }
}

static int skip_value(cur_t *c, int depth);

static int skip_number(cur_t *c) {
    const uint8_t *p = c->p, *end = c->end;
    if (p < end && *p == '-') p++;
    if (p >= end) return -1;
    if (*p == '0') p++;
    else if (*p >= '1' && *p <= '9') { while (p < end && *p >= '0' && *p <= '9') p++; }
    else return -1;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        if (p >= end || *p < '0' || *p > '9') return -1;
        while (p < end && *p >= '0' && *p <= '9') p++;
    }
    c->p = p;
    return 0;
}

static int skip_literal(cur_t *c, const char *lit, size_t n) {
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0) return -1;
    c->p += n;
    return 0;
}

static int skip_value(cur_t *c, int depth) {
    if (depth > MAX_DEPTH) return -1;
    skip_ws(c);
    if (c->p >= c->end) return -1;
    switch (*c->p) {
        case '"': return skip_string(c);
        case 't': return skip_literal(c, "true", 4);
        case 'f': return skip_literal(c, "false", 5);
        case 'n': return skip_literal(c, "null", 4);
        case '[':
            c->p++;
            skip_ws(c);
            if (c->p < c->end && *c->p == ']') { c->p++; return 0; }
            for (;;) {
                if (skip_value(c, depth + 1) < 0) return -1;
                skip_ws(c);
                if (c->p >= c->end) return -1;
                if (*c->p == ',') { c->p++; continue; }
                if (*c->p == ']') { c->p++; return 0; }
                return -1;
            }
        case '{':
            c->p++;
            skip_ws(c);
            if (c->p < c->end && *c->p == '}') { c->p++; return 0; }
            for (;;) {
                skip_ws(c);
                if (c->p >= c->end || *c->p != '"' || skip_string(c) < 0) return -1;
                skip_ws(c);
                if (c->p >= c->end || *c->p != ':') return -1;
                c->p++;
                if (skip_value(c, depth + 1) < 0) return -1;
                skip_ws(c);
                if (c->p >= c->end) return -1;
                if (*c->p == ',') { c->p++; continue; }
                if (*c->p == '}') { c->p++; return 0; }
                return -1;
            }
        default: return skip_number(c);
    }
}

#endif
