/**
 * runtime/memory.ts: the worker's V8 flags, and a young-generation collection per
 * BODY_BYTES_PER_COLLECTION bytes passed on (socket buffers live outside V8's heap).
 */
describe('bodyBytes', () => {
  const original = (globalThis as { gc?: unknown }).gc;
  afterEach(() => {
    (globalThis as { gc?: unknown }).gc = original;
  });

  test('collects the young generation once per BODY_BYTES_PER_COLLECTION bytes, however they are split', () => {
    const gc = jest.fn();
    (globalThis as { gc?: unknown }).gc = gc;
    jest.isolateModules(() => {
      const { bodyBytes, BODY_BYTES_PER_COLLECTION } = require('../../runtime/memory') as typeof import('../../runtime/memory');
      const chunk = 64 * 1024;
      for (let sent = chunk; sent < BODY_BYTES_PER_COLLECTION; sent += chunk) bodyBytes(chunk);
      expect(gc).not.toHaveBeenCalled();
      bodyBytes(chunk);
      expect(gc).toHaveBeenCalledTimes(1);
      expect(gc).toHaveBeenCalledWith({ type: 'minor' });
      bodyBytes(BODY_BYTES_PER_COLLECTION - 1);
      expect(gc).toHaveBeenCalledTimes(1);
      bodyBytes(1);
      expect(gc).toHaveBeenCalledTimes(2);
    });
  });

  test('request bodies count at UPLOAD_BYTES_PER_COLLECTION, in the same tally', () => {
    const gc = jest.fn();
    (globalThis as { gc?: unknown }).gc = gc;
    jest.isolateModules(() => {
      const m = require('../../runtime/memory') as typeof import('../../runtime/memory');
      m.uploadBytes(m.UPLOAD_BYTES_PER_COLLECTION - 1024 * 1024);
      expect(gc).not.toHaveBeenCalled();
      m.uploadBytes(1024 * 1024);
      expect(gc).toHaveBeenCalledTimes(1);
      m.uploadBytes(m.UPLOAD_BYTES_PER_COLLECTION / 2);
      m.bodyBytes(m.BODY_BYTES_PER_COLLECTION / 2);
      expect(gc).toHaveBeenCalledTimes(2);
    });
  });

  test('only counts where node runs without --expose-gc', () => {
    delete (globalThis as { gc?: unknown }).gc;
    jest.isolateModules(() => {
      const { bodyBytes, BODY_BYTES_PER_COLLECTION } = require('../../runtime/memory') as typeof import('../../runtime/memory');
      expect(() => bodyBytes(3 * BODY_BYTES_PER_COLLECTION)).not.toThrow();
    });
  });
});
