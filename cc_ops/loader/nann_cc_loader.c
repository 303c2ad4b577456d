/* nann-tf-cc-loader: loads an exported version the way tensorflow_model_server does, with no
 * Python in the process, through TensorFlow's C API (libtensorflow_cc.so.2 of the pip wheel).
 *
 *   nann-tf-cc-loader VERSION_DIR [--op-library SO] [--session-config CONFIGPROTO_BIN]
 *                     [--no-warmup] [--requests TFRECORD --outputs FILE [--repeat N]]
 *
 * 1. TF_LoadLibrary(SO) when given: the op registered as the Docker image links it.
 * 2. TF_LoadSessionFromSavedModel(VERSION_DIR, tag "serve") with the session options from a
 *    serialized ConfigProto (serving/session_config.pbtxt, serialized by the caller).
 * 3. The signatures' tensor names from the returned MetaGraphDef.
 * 4. Replays VERSION_DIR/assets.extra/tf_serving_warmup_requests (a TFRecord of PredictionLog)
 *    as TF Serving does before a version serves; any failing record fails the load.
 * 5. Runs every PredictionLog of --requests through TF_SessionRun with the signature's tensor
 *    names and writes every output to --outputs (format below); --repeat N runs each request N
 *    times and prints the per-call latencies.
 *
 * Only the protobuf wire fields needed are decoded (MetaGraphDef.signature_def, PredictionLog.
 * predict_log.request, TensorProto with tensor_content or packed int/float values, or
 * string_val for DT_STRING: string item ids).
 *
 * Output file: per request: u32 number of outputs; per output (sorted by alias): u32 alias
 * length, alias bytes, i32 TF_DataType, u32 rank, i64 dims[rank], u64 byte count, bytes; the
 * bytes of a TF_STRING output are, per element, u32 length and the string's bytes.
 * Exit status: 0 ok; 1 a failure (message on stderr naming the file, record or signature);
 * 2 bad usage.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tensorflow/c/c_api.h"
#include "tensorflow/c/tf_tstring.h"

#define MAX_SIGS 32
#define MAX_IO 16

typedef struct { const uint8_t *p, *end; } Buf;
typedef struct { char alias[128]; char tensor[256]; } IO;
typedef struct { char name[128]; IO in[MAX_IO]; int n_in; IO out[MAX_IO]; int n_out; } Sig;
typedef struct { char alias[128]; TF_Tensor *t; } Input;

static Sig sigs[MAX_SIGS];
static int n_sigs;

static void die(const char *fmt, const char *a, const char *b) {
  fprintf(stderr, "nann-tf-cc-loader: ");
  fprintf(stderr, fmt, a, b);
  fprintf(stderr, "\n");
  exit(1);
}

/* ---------------------------------------------------------------- protobuf wire format */
static int varint(Buf *b, uint64_t *v) {
  uint64_t r = 0;
  for (int s = 0; s < 64 && b->p < b->end; s += 7) {
    uint8_t c = *b->p++;
    r |= (uint64_t)(c & 0x7f) << s;
    if (!(c & 0x80)) { *v = r; return 1; }
  }
  return 0;
}

/* Next field: its number, wire type, and (for length-delimited) its bytes. 0 at the end,
 * -1 on a malformed message. */
static int field(Buf *b, int *num, int *wt, Buf *sub, uint64_t *val) {
  uint64_t key;
  if (b->p >= b->end) return 0;
  if (!varint(b, &key)) return -1;
  *num = (int)(key >> 3);
  *wt = (int)(key & 7);
  if (*wt == 0) return varint(b, val) ? 1 : -1;
  if (*wt == 1) { if (b->end - b->p < 8) return -1; memcpy(val, b->p, 8); b->p += 8; return 1; }
  if (*wt == 5) { if (b->end - b->p < 4) return -1; *val = 0; memcpy(val, b->p, 4); b->p += 4; return 1; }
  if (*wt == 2) {
    uint64_t n;
    if (!varint(b, &n) || (uint64_t)(b->end - b->p) < n) return -1;
    sub->p = b->p; sub->end = b->p + n; b->p += n;
    return 1;
  }
  return -1;
}

static void copy_str(char *dst, size_t cap, Buf s) {
  size_t n = (size_t)(s.end - s.p);
  if (n >= cap) n = cap - 1;
  memcpy(dst, s.p, n);
  dst[n] = 0;
}

/* map<string, TensorInfo> entry -> alias, tensor name */
static int io_entry(Buf e, IO *io) {
  int num, wt, r; Buf sub; uint64_t v;
  io->alias[0] = io->tensor[0] = 0;
  while ((r = field(&e, &num, &wt, &sub, &v)) > 0) {
    if (num == 1 && wt == 2) copy_str(io->alias, sizeof io->alias, sub);
    if (num == 2 && wt == 2) {
      int n2, w2; Buf s2; uint64_t v2;
      while ((r = field(&sub, &n2, &w2, &s2, &v2)) > 0)
        if (n2 == 1 && w2 == 2) copy_str(io->tensor, sizeof io->tensor, s2);
      if (r < 0) return -1;
    }
  }
  return r < 0 ? -1 : 0;
}

static int cmp_io(const void *a, const void *b) {
  return strcmp(((const IO *)a)->alias, ((const IO *)b)->alias);
}

static void parse_signatures(const TF_Buffer *mg) {
  Buf b = {mg->data, (const uint8_t *)mg->data + mg->length}, sub, s2, s3;
  int num, wt, n2, w2, n3, w3, r;
  uint64_t v;
  while ((r = field(&b, &num, &wt, &sub, &v)) > 0) {
    if (num != 5 || wt != 2 || n_sigs == MAX_SIGS) continue; /* signature_def map entry */
    Sig *s = &sigs[n_sigs++];
    memset(s, 0, sizeof *s);
    while ((r = field(&sub, &n2, &w2, &s2, &v)) > 0) {
      if (n2 == 1 && w2 == 2) copy_str(s->name, sizeof s->name, s2);
      if (n2 == 2 && w2 == 2) {
        while ((r = field(&s2, &n3, &w3, &s3, &v)) > 0) {
          if (w3 != 2) continue;
          if (n3 == 1 && s->n_in < MAX_IO && io_entry(s3, &s->in[s->n_in]) == 0) s->n_in++;
          if (n3 == 2 && s->n_out < MAX_IO && io_entry(s3, &s->out[s->n_out]) == 0) s->n_out++;
        }
      }
    }
    qsort(s->out, s->n_out, sizeof(IO), cmp_io);
  }
  if (r < 0) die("%s%s", "the MetaGraphDef returned by the loader is malformed", "");
}

static Sig *find_sig(const char *name) {
  for (int i = 0; i < n_sigs; i++)
    if (!strcmp(sigs[i].name, name)) return &sigs[i];
  return NULL;
}

/* Elements of a TF_STRING tensor. */
static int64_t num_elements(const TF_Tensor *t) {
  int64_t count = 1;
  for (int i = 0; i < TF_NumDims(t); i++) count *= TF_Dim(t, i);
  return count;
}

/* Deletes a tensor made by tensor_from_proto (string elements own their heap bytes). */
static void delete_input(TF_Tensor *t) {
  if (TF_TensorType(t) == TF_STRING) {
    TF_TString *s = (TF_TString *)TF_TensorData(t);
    for (int64_t i = 0; i < num_elements(t); i++) TF_StringDealloc(&s[i]);
  }
  TF_DeleteTensor(t);
}

/* DT_STRING TensorProto (its string_val, field 8, one field per element) -> TF_Tensor. */
static TF_Tensor *string_tensor(Buf msg, const int64_t *dims, int rank, int64_t count,
                                char *err, size_t errcap) {
  int num, wt; Buf sub; uint64_t v;
  TF_Tensor *t = TF_AllocateTensor(TF_STRING, dims, rank, (size_t)count * sizeof(TF_TString));
  TF_TString *data = (TF_TString *)TF_TensorData(t);
  for (int64_t i = 0; i < count; i++) TF_StringInit(&data[i]);
  int64_t i = 0;
  while (field(&msg, &num, &wt, &sub, &v) > 0 && i <= count)
    if (num == 8 && wt == 2) {
      if (i < count) TF_StringCopy(&data[i], (const char *)sub.p, (size_t)(sub.end - sub.p));
      i++;
    }
  if (i != count && !(i == 1 && count > 1)) {
    snprintf(err, errcap, "a string tensor of %ld elements has %ld values", (long)count, (long)i);
    delete_input(t);
    return NULL;
  }
  for (int64_t j = 1; i == 1 && j < count; j++) /* one value: every element (as TensorProto) */
    TF_StringCopy(&data[j], TF_StringGetDataPointer(&data[0]), TF_StringGetSize(&data[0]));
  return t;
}

/* TensorProto -> TF_Tensor (float, int32, int64, bool, string: what nann-tf's signatures
 * take). */
static TF_Tensor *tensor_from_proto(Buf b, char *err, size_t errcap) {
  int num, wt, r; Buf sub; uint64_t v;
  int dtype = 0, rank = 0;
  int64_t dims[8];
  Buf content = {NULL, NULL}, packed = {NULL, NULL}, msg = b;
  while ((r = field(&b, &num, &wt, &sub, &v)) > 0) {
    if (num == 1 && wt == 0) dtype = (int)v;
    else if (num == 2 && wt == 2) {
      int n2, w2; Buf s2; uint64_t v2;
      while (field(&sub, &n2, &w2, &s2, &v2) > 0) {
        if (n2 == 2 && w2 == 2 && rank < 8) {
          int n3, w3; Buf s3; uint64_t v3;
          dims[rank] = 0;
          while (field(&s2, &n3, &w3, &s3, &v3) > 0)
            if (n3 == 1 && w3 == 0) dims[rank] = (int64_t)v3;
          rank++;
        }
      }
    } else if (num == 4 && wt == 2) content = sub;
    else if ((num == 5 || num == 7 || num == 10 || num == 11) && wt == 2) packed = sub;
  }
  if (r < 0) { snprintf(err, errcap, "malformed TensorProto"); return NULL; }
  if (dtype == TF_STRING) {
    int64_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    return string_tensor(msg, dims, rank, n, err, errcap);
  }
  size_t width = dtype == TF_FLOAT || dtype == TF_INT32 ? 4 : dtype == TF_INT64 ? 8
                 : dtype == TF_BOOL ? 1 : 0;
  if (!width) { snprintf(err, errcap, "unsupported dtype %d", dtype); return NULL; }
  int64_t count = 1;
  for (int i = 0; i < rank; i++) count *= dims[i];
  TF_Tensor *t = TF_AllocateTensor((TF_DataType)dtype, dims, rank, (size_t)count * width);
  uint8_t *data = TF_TensorData(t);
  if (content.p) {
    if ((size_t)(content.end - content.p) != (size_t)count * width) {
      snprintf(err, errcap, "tensor_content has %ld bytes, the shape needs %ld",
               (long)(content.end - content.p), (long)(count * width));
      TF_DeleteTensor(t);
      return NULL;
    }
    memcpy(data, content.p, (size_t)count * width);
    return t;
  }
  int64_t i = 0;
  uint64_t last = 0;
  while (packed.p && packed.p < packed.end && i < count) {
    if (dtype == TF_FLOAT) {
      if (packed.end - packed.p < 4) break;
      memcpy(data + 4 * i, packed.p, 4); packed.p += 4;
      memcpy(&last, data + 4 * i, 4);
    } else {
      if (!varint(&packed, &last)) break;
      if (dtype == TF_BOOL) data[i] = last != 0;
      else if (dtype == TF_INT32) { int32_t x = (int32_t)last; memcpy(data + 4 * i, &x, 4); }
      else { int64_t x = (int64_t)last; memcpy(data + 8 * i, &x, 8); }
    }
    i++;
  }
  if (i == 0 && count > 0) {
    snprintf(err, errcap, "no values for a tensor of %ld elements", (long)count);
    TF_DeleteTensor(t);
    return NULL;
  }
  for (; i < count; i++) memcpy(data + width * i, data + width * (i - 1), width); /* repeat last */
  return t;
}

/* ---------------------------------------------------------------- TFRecord */
static uint32_t crc_table[256];
static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}
static uint32_t masked_crc(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  while (n--) c = crc_table[(c ^ *p++) & 0xff] ^ (c >> 8);
  c ^= 0xffffffffu;
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

typedef struct { uint8_t *data; size_t size, pos; const char *path; int index; } Records;

static int read_file(const char *path, Records *rec) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  rec->data = malloc(n > 0 ? (size_t)n : 1);
  rec->size = fread(rec->data, 1, (size_t)n, f) == (size_t)n ? (size_t)n : 0;
  fclose(f);
  rec->pos = 0; rec->path = path; rec->index = 0;
  return 1;
}

/* Next record's bytes, 0 at the end; exits on a truncated or corrupt record. */
static int next_record(Records *r, Buf *out) {
  char msg[64];
  if (r->pos == r->size) return 0;
  snprintf(msg, sizeof msg, "record %d", r->index);
  if (r->size - r->pos < 12) die("%s: %s is truncated (no complete header)", r->path, msg);
  uint64_t len; uint32_t crc;
  memcpy(&len, r->data + r->pos, 8);
  memcpy(&crc, r->data + r->pos + 8, 4);
  if (masked_crc(r->data + r->pos, 8) != crc) die("%s: %s has a bad length checksum", r->path, msg);
  if (r->size - r->pos - 12 < len + 4) die("%s: %s is truncated", r->path, msg);
  const uint8_t *d = r->data + r->pos + 12;
  memcpy(&crc, d + len, 4);
  if (masked_crc(d, len) != crc) die("%s: %s has a bad data checksum", r->path, msg);
  out->p = d; out->end = d + len;
  r->pos += 12 + len + 4;
  r->index++;
  return 1;
}

/* PredictionLog -> signature name and inputs. Returns the number of inputs. */
static int parse_request(Buf log, char *signature, Input *inputs, const Records *r) {
  int num, wt, n2, w2, n3, w3, n4, w4, res;
  Buf pl, req, s3, s4;
  uint64_t v;
  int n_in = 0, found = 0;
  char err[256], where[64];
  snprintf(where, sizeof where, "record %d", r->index - 1);
  strcpy(signature, "serving_default");
  while ((res = field(&log, &num, &wt, &pl, &v)) > 0) {
    if (num != 6 || wt != 2) continue; /* PredictionLog.predict_log */
    while (field(&pl, &n2, &w2, &req, &v) > 0) {
      if (n2 != 1 || w2 != 2) continue; /* PredictLog.request */
      found = 1;
      while (field(&req, &n3, &w3, &s3, &v) > 0) {
        if (n3 == 1 && w3 == 2) { /* model_spec */
          while (field(&s3, &n4, &w4, &s4, &v) > 0)
            if (n4 == 3 && w4 == 2 && s4.end > s4.p) copy_str(signature, 128, s4);
        } else if (n3 == 2 && w3 == 2 && n_in < MAX_IO) { /* inputs map entry */
          Input *in = &inputs[n_in];
          in->alias[0] = 0; in->t = NULL;
          while (field(&s3, &n4, &w4, &s4, &v) > 0) {
            if (n4 == 1 && w4 == 2) copy_str(in->alias, sizeof in->alias, s4);
            if (n4 == 2 && w4 == 2) {
              in->t = tensor_from_proto(s4, err, sizeof err);
              if (!in->t) die("%s: %s", where, err);
            }
          }
          n_in++;
        }
      }
    }
  }
  if (res < 0 || !found) die("%s: %s is not a PredictionLog with a predict_log request", r->path, where);
  return n_in;
}

/* ---------------------------------------------------------------- running */
static TF_Output output_of(TF_Graph *g, const char *tensor) {
  char op[256];
  const char *colon = strrchr(tensor, ':');
  size_t n = colon ? (size_t)(colon - tensor) : strlen(tensor);
  if (n >= sizeof op) n = sizeof op - 1;
  memcpy(op, tensor, n); op[n] = 0;
  TF_Output o = {TF_GraphOperationByName(g, op), colon ? atoi(colon + 1) : 0};
  if (!o.oper) die("the graph has no operation %s (tensor %s)", op, tensor);
  return o;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Runs one request; returns its outputs in `out` (sorted by alias). */
static void run_request(TF_Session *sess, TF_Graph *g, const char *signature, Input *inputs,
                        int n_in, TF_Tensor **out, const Sig **used, const char *where) {
  const Sig *s = find_sig(signature);
  if (!s) die("%s: the model has no signature \"%s\"", where, signature);
  TF_Output feeds[MAX_IO], fetches[MAX_IO];
  TF_Tensor *values[MAX_IO];
  if (n_in != s->n_in) die("%s: wrong number of inputs for signature \"%s\"", where, signature);
  for (int i = 0; i < n_in; i++) {
    const IO *io = NULL;
    for (int j = 0; j < s->n_in; j++)
      if (!strcmp(s->in[j].alias, inputs[i].alias)) io = &s->in[j];
    if (!io) die("%s: input \"%s\" is not an input of the signature", where, inputs[i].alias);
    feeds[i] = output_of(g, io->tensor);
    values[i] = inputs[i].t;
  }
  for (int j = 0; j < s->n_out; j++) fetches[j] = output_of(g, s->out[j].tensor);
  TF_Status *st = TF_NewStatus();
  TF_SessionRun(sess, NULL, feeds, values, n_in, fetches, out, s->n_out, NULL, 0, NULL, st);
  if (TF_GetCode(st) != TF_OK) die("%s: %s", where, TF_Message(st));
  TF_DeleteStatus(st);
  *used = s;
}

static void write_outputs(FILE *f, const Sig *s, TF_Tensor **out) {
  uint32_t n = (uint32_t)s->n_out;
  fwrite(&n, 4, 1, f);
  for (int j = 0; j < s->n_out; j++) {
    uint32_t len = (uint32_t)strlen(s->out[j].alias), rank = (uint32_t)TF_NumDims(out[j]);
    int32_t dtype = (int32_t)TF_TensorType(out[j]);
    uint64_t bytes = TF_TensorByteSize(out[j]);
    const TF_TString *strings =
        dtype == TF_STRING ? (const TF_TString *)TF_TensorData(out[j]) : NULL;
    if (strings) {
      bytes = 0;
      for (int64_t i = 0; i < num_elements(out[j]); i++)
        bytes += 4 + TF_StringGetSize(&strings[i]);
    }
    fwrite(&len, 4, 1, f);
    fwrite(s->out[j].alias, 1, len, f);
    fwrite(&dtype, 4, 1, f);
    fwrite(&rank, 4, 1, f);
    for (uint32_t d = 0; d < rank; d++) {
      int64_t dim = TF_Dim(out[j], (int)d);
      fwrite(&dim, 8, 1, f);
    }
    fwrite(&bytes, 8, 1, f);
    if (strings) {
      for (int64_t i = 0; i < num_elements(out[j]); i++) {
        uint32_t size = (uint32_t)TF_StringGetSize(&strings[i]);
        fwrite(&size, 4, 1, f);
        fwrite(TF_StringGetDataPointer(&strings[i]), 1, size, f);
      }
    } else {
      fwrite(TF_TensorData(out[j]), 1, bytes, f);
    }
  }
}

static int replay(TF_Session *sess, TF_Graph *g, const char *path, FILE *outputs, int repeat) {
  Records r;
  Buf log;
  Input inputs[MAX_IO];
  char signature[128], where[600];
  TF_Tensor *out[MAX_IO];
  const Sig *s;
  if (!read_file(path, &r)) die("%s: cannot read it (%s)", path, strerror(errno));
  int count = 0;
  while (next_record(&r, &log)) {
    int n_in = parse_request(log, signature, inputs, &r);
    snprintf(where, sizeof where, "%s record %d (signature \"%s\")", path, r.index - 1, signature);
    for (int k = 0; k < (repeat > 0 ? repeat : 1); k++) {
      double t0 = now_ms();
      run_request(sess, g, signature, inputs, n_in, out, &s, where);
      if (repeat > 0) printf("latency_ms %d %.4f\n", r.index - 1, now_ms() - t0);
      if (outputs && k == 0) write_outputs(outputs, s, out);
      for (int j = 0; j < s->n_out; j++) TF_DeleteTensor(out[j]);
    }
    for (int i = 0; i < n_in; i++) delete_input(inputs[i].t);
    count++;
  }
  free(r.data);
  return count;
}

int main(int argc, char **argv) {
  const char *dir = NULL, *oplib = NULL, *config = NULL, *requests = NULL, *outputs = NULL;
  int warmup = 1, repeat = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--op-library") && i + 1 < argc) oplib = argv[++i];
    else if (!strcmp(argv[i], "--session-config") && i + 1 < argc) config = argv[++i];
    else if (!strcmp(argv[i], "--requests") && i + 1 < argc) requests = argv[++i];
    else if (!strcmp(argv[i], "--outputs") && i + 1 < argc) outputs = argv[++i];
    else if (!strcmp(argv[i], "--repeat") && i + 1 < argc) repeat = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--no-warmup")) warmup = 0;
    else if (argv[i][0] != '-' && !dir) dir = argv[i];
    else { fprintf(stderr, "usage: nann-tf-cc-loader VERSION_DIR [--op-library SO] "
                           "[--session-config BIN] [--no-warmup] [--requests F --outputs F "
                           "[--repeat N]]\n"); return 2; }
  }
  if (!dir || (requests && !outputs)) {
    fprintf(stderr, "usage: nann-tf-cc-loader VERSION_DIR ... (--requests needs --outputs)\n");
    return 2;
  }
  crc_init();
  TF_Status *st = TF_NewStatus();
  if (oplib) {
    TF_Library *lib = TF_LoadLibrary(oplib, st);
    if (TF_GetCode(st) != TF_OK || !lib) die("%s: cannot load the op library: %s", oplib, TF_Message(st));
  }
  TF_SessionOptions *opts = TF_NewSessionOptions();
  if (config) {
    Records c;
    if (!read_file(config, &c)) die("%s: cannot read it (%s)", config, strerror(errno));
    TF_SetConfig(opts, c.data, c.size, st);
    if (TF_GetCode(st) != TF_OK) die("%s: not a serialized ConfigProto: %s", config, TF_Message(st));
    free(c.data);
  }
  const char *tags[] = {"serve"};
  TF_Graph *g = TF_NewGraph();
  TF_Buffer *mg = TF_NewBuffer();
  double t0 = now_ms();
  TF_Session *sess = TF_LoadSessionFromSavedModel(opts, NULL, dir, tags, 1, g, mg, st);
  if (TF_GetCode(st) != TF_OK) die("%s: cannot load SavedModel: %s", dir, TF_Message(st));
  parse_signatures(mg);
  printf("loaded %s in %.1f ms: %d signatures\n", dir, now_ms() - t0, n_sigs);
  for (int i = 0; i < n_sigs; i++) printf("signature %s\n", sigs[i].name);
  if (warmup) {
    char path[4096];
    snprintf(path, sizeof path, "%s/assets.extra/tf_serving_warmup_requests", dir);
    FILE *probe = fopen(path, "rb");
    if (probe) {
      fclose(probe);
      t0 = now_ms();
      int n = replay(sess, g, path, NULL, 0);
      printf("warmup_records %d in %.1f ms\n", n, now_ms() - t0);
    } else {
      printf("warmup_records 0 (no %s)\n", path);
    }
  }
  if (requests) {
    FILE *f = fopen(outputs, "wb");
    if (!f) die("%s: cannot write it (%s)", outputs, strerror(errno));
    int n = replay(sess, g, requests, f, repeat);
    if (fclose(f) != 0) die("%s: cannot write it (%s)", outputs, strerror(errno));
    printf("requests %d\n", n);
  }
  TF_CloseSession(sess, st);
  TF_DeleteSession(sess, st);
  TF_DeleteGraph(g);
  TF_DeleteBuffer(mg);
  TF_DeleteSessionOptions(opts);
  TF_DeleteStatus(st);
  return 0;
}
