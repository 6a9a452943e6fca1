/* BLAKE2b-64: see blake2b64.c. */
#ifndef RECIPE_BLAKE2B64_H
#define RECIPE_BLAKE2B64_H
#include <stddef.h>
#include <stdint.h>

/* blake2b(data, digest_size=8).digest() read as a little-endian uint64 */
uint64_t rc_blake2b64(const uint8_t *data, size_t len);

#endif
