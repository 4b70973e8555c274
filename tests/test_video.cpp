// Video input / prediction output (io/video.h): directory and ffmpeg frame sources, recorded
// label maps, and the label / overlay PNG writers. Each test works in its own temporary folder.
#include <sys/types.h>
#include <unistd.h>

#include <sys/stat.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "io/video.h"
#include "tensor/image.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace st;

namespace {

// A fresh directory under the system temp folder, removed (with its content) at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    std::random_device rd;
    path = fs::temp_directory_path() / ("st_video_test_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(counter++) + "_" + std::to_string(rd()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// An RGB image of size h x w filled with (r, g, b).
image::Image solid_rgb(int64_t h, int64_t w, uint8_t r, uint8_t g, uint8_t b) {
  image::Image img;
  img.height = h;
  img.width = w;
  img.channels = 3;
  img.pixels.resize(size_t(h * w * 3));
  for (size_t i = 0; i < img.pixels.size(); i += 3) {
    img.pixels[i] = r;
    img.pixels[i + 1] = g;
    img.pixels[i + 2] = b;
  }
  return img;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const st::Error& e) {
    return e.what();
  }
  return "<no st::Error thrown>";
}

// Runs a shell command (paths in it are test-made temp paths without quotes).
bool sh(const std::string& cmd) { return std::system(cmd.c_str()) == 0; }

// Child processes of this process that still exist (running or zombie), from /proc.
int children_of_self() {
  const std::string me = std::to_string(::getpid());
  int count = 0;
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    std::ifstream stat(it->path() / "stat");
    std::string line;
    if (!std::getline(stat, line)) continue;
    // "pid (comm) state ppid ...": comm may hold spaces, so parse after the last ')'.
    size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(line.substr(close + 1));
    std::string state, ppid;
    rest >> state >> ppid;
    if (ppid == me) ++count;
  }
  return count;
}

// Replaces PATH for the scope (restored after, also when a REQUIRE fails).
struct PathOverride {
  std::string saved;
  bool had = false;
  explicit PathOverride(const std::string& value) {
    if (const char* p = std::getenv("PATH")) saved = p, had = true;
    ::setenv("PATH", value.c_str(), 1);
  }
  ~PathOverride() {
    if (had) ::setenv("PATH", saved.c_str(), 1);
    else ::unsetenv("PATH");
  }
};

// Writes an executable shell script.
void write_script(const fs::path& path, const std::string& body) {
  { std::ofstream(path) << "#!/bin/sh\n" << body << "\n"; }
  fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
}

double mean_abs_diff(const image::Image& a, const image::Image& b) {
  REQUIRE(a.pixels.size() == b.pixels.size());
  double s = 0;
  for (size_t i = 0; i < a.pixels.size(); ++i) s += std::abs(int(a.pixels[i]) - int(b.pixels[i]));
  return s / double(a.pixels.size());
}

}  // namespace

TEST_CASE("video: directory source reads images in name order as BGR", "[video]") {
  TempDir tmp;
  // Written out of order, mixed-case extensions, plus files that must be ignored.
  image::write_png(tmp.path / "b.png", solid_rgb(3, 4, 2, 0, 0));
  image::write_png(tmp.path / "a.png", solid_rgb(3, 4, 1, 0, 0));
  image::write_png(tmp.path / "c.PNG", solid_rgb(3, 4, 3, 0, 0));
  { std::ofstream(tmp.path / "notes.txt") << "not an image"; }
  fs::create_directory(tmp.path / "sub.png");  // a directory, not an image

  auto src = io::open_video(tmp.path);
  REQUIRE(src->width() == 4);
  REQUIRE(src->height() == 3);
  REQUIRE(src->frame_count() == 3);
  REQUIRE(src->describe().find(tmp.path.string()) != std::string::npos);

  io::Frame f;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(src->next(f));
    REQUIRE(f.index == i);
    REQUIRE(f.bgr.height == 3);
    REQUIRE(f.bgr.width == 4);
    REQUIRE(f.bgr.channels == 3);
    REQUIRE(f.bgr.pixels.size() == 3 * 4 * 3);
    // Red channel (R = i + 1) is the last byte of each BGR pixel.
    REQUIRE(int(f.bgr.pixels[2]) == i + 1);
  }
  REQUIRE_FALSE(src->next(f));
  REQUIRE_FALSE(src->next(f));
}

TEST_CASE("video: directory source gives BGR channel order", "[video]") {
  TempDir tmp;
  image::Image img = solid_rgb(2, 2, 10, 20, 30);
  img.pixels[3 * 3 + 0] = 200;  // last pixel: R=200, G=150, B=100
  img.pixels[3 * 3 + 1] = 150;
  img.pixels[3 * 3 + 2] = 100;
  image::write_png(tmp.path / "000000.png", img);

  auto src = io::open_video(tmp.path);
  io::Frame f;
  REQUIRE(src->next(f));
  REQUIRE(int(f.bgr.pixels[0]) == 30);  // B
  REQUIRE(int(f.bgr.pixels[1]) == 20);  // G
  REQUIRE(int(f.bgr.pixels[2]) == 10);  // R
  REQUIRE(int(f.bgr.pixels[9]) == 100);
  REQUIRE(int(f.bgr.pixels[10]) == 150);
  REQUIRE(int(f.bgr.pixels[11]) == 200);
}

TEST_CASE("video: directory source errors", "[video]") {
  TempDir tmp;
  SECTION("an image of another size is named") {
    image::write_png(tmp.path / "000000.png", solid_rgb(3, 4, 0, 0, 0));
    image::write_png(tmp.path / "000001.png", solid_rgb(3, 4, 0, 0, 0));
    image::write_png(tmp.path / "000002.png", solid_rgb(3, 5, 0, 0, 0));
    std::string msg = error_of([&] { io::open_video(tmp.path); });
    INFO(msg);
    REQUIRE(msg.find("000002.png") != std::string::npos);
  }
  SECTION("an empty directory") {
    { std::ofstream(tmp.path / "readme.txt") << "no images here"; }
    std::string msg = error_of([&] { io::open_video(tmp.path); });
    INFO(msg);
    REQUIRE(msg.find("no images") != std::string::npos);
    REQUIRE(msg.find(tmp.path.string()) != std::string::npos);
  }
  SECTION("a missing path is named") {
    fs::path missing = tmp.path / "does_not_exist";
    std::string msg = error_of([&] { io::open_video(missing); });
    INFO(msg);
    REQUIRE(msg.find(missing.string()) != std::string::npos);
  }
  SECTION("an unreadable image is named") {
    { std::ofstream(tmp.path / "broken.png") << "not a png"; }
    std::string msg = error_of([&] { io::open_video(tmp.path); });
    INFO(msg);
    REQUIRE(msg.find("broken.png") != std::string::npos);
  }
}

TEST_CASE("video: ffmpeg source decodes every frame exactly", "[video]") {
  if (!io::ffmpeg_available()) ST_SKIP("ffmpeg/ffprobe not on PATH");
  TempDir tmp;
  // The same 12 test-pattern frames as a lossless RGB video (FFV1) and as PNG files.
  const fs::path video = tmp.path / "clip.mkv";
  const fs::path pngs = tmp.path / "png";
  fs::create_directory(pngs);
  const std::string gen = "ffmpeg -nostdin -v error -f lavfi -i testsrc=size=64x48:rate=10 ";
  REQUIRE(sh(gen + "-frames:v 12 -pix_fmt bgr0 -c:v ffv1 '" + video.string() + "'"));
  REQUIRE(sh(gen + "-frames:v 12 '" + (pngs / "%03d.png").string() + "'"));

  auto src = io::open_video(video);
  REQUIRE(src->width() == 64);
  REQUIRE(src->height() == 48);
  REQUIRE((src->frame_count() == 12 || src->frame_count() == -1));  // mkv stores no count
  REQUIRE(src->describe().find("clip.mkv") != std::string::npos);
  auto ref = io::open_video(pngs);
  REQUIRE(ref->frame_count() == 12);

  io::Frame f, r;
  int n = 0;
  while (src->next(f)) {
    INFO("frame " << n);
    REQUIRE(f.index == n);
    REQUIRE(f.bgr.height == 48);
    REQUIRE(f.bgr.width == 64);
    REQUIRE(f.bgr.channels == 3);
    REQUIRE(ref->next(r));
    REQUIRE(mean_abs_diff(f.bgr, r.bgr) < 0.5);  // lossless RGB: equal up to nothing
    ++n;
  }
  REQUIRE(n == 12);
  REQUIRE_FALSE(src->next(f));  // stays at the end
  src.reset();
  REQUIRE(children_of_self() == 0);
}

TEST_CASE("video: ffmpeg source stopped early leaves no process behind", "[video]") {
  if (!io::ffmpeg_available()) ST_SKIP("ffmpeg/ffprobe not on PATH");
  TempDir tmp;
  // 60 frames of 320x240 bgr24 = 13.8 MB: ffmpeg is blocked on the full pipe after 2 frames.
  const fs::path video = tmp.path / "long.mkv";
  REQUIRE(sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=320x240:rate=10 -frames:v 60 "
             "-c:v ffv1 '" + video.string() + "'"));
  REQUIRE(children_of_self() == 0);
  auto t0 = std::chrono::steady_clock::now();
  {
    auto src = io::open_video(video);
    io::Frame f;
    REQUIRE(src->next(f));
    REQUIRE(src->next(f));
    REQUIRE(f.index == 1);
    REQUIRE(children_of_self() == 1);  // the decoder is running
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(children_of_self() == 0);
  REQUIRE(secs < 10.0);
}

TEST_CASE("video: ffmpeg source rejects a file that is not a video", "[video]") {
  if (!io::ffmpeg_available()) ST_SKIP("ffmpeg/ffprobe not on PATH");
  TempDir tmp;
  const fs::path garbage = tmp.path / "garbage.mp4";
  {
    std::ofstream out(garbage, std::ios::binary);
    for (int i = 0; i < 1000; ++i) out << "this is not a video file ";
  }
  std::string msg = error_of([&] { io::open_video(garbage); });
  INFO(msg);
  REQUIRE(msg.find("garbage.mp4") != std::string::npos);
  REQUIRE(msg.find("Invalid data") != std::string::npos);  // ffprobe's own reason
  REQUIRE(children_of_self() == 0);
}

TEST_CASE("video: ffmpeg source handles awkward file names", "[video]") {
  if (!io::ffmpeg_available()) ST_SKIP("ffmpeg/ffprobe not on PATH");
  TempDir tmp;
  const fs::path plain = tmp.path / "plain.mkv";
  REQUIRE(sh("ffmpeg -nostdin -v error -f lavfi -i testsrc=size=32x16:rate=10 -frames:v 3 "
             "-c:v ffv1 '" + plain.string() + "'"));
  // Quotes, spaces, a shell metacharacter and a protocol-like prefix.
  const fs::path odd = tmp.path / "it's a \"clip\" $HOME; x:y.mkv";
  fs::rename(plain, odd);
  auto src = io::open_video(odd);
  io::Frame f;
  int n = 0;
  while (src->next(f)) ++n;
  REQUIRE(n == 3);
  REQUIRE(src->width() == 32);
  REQUIRE(src->height() == 16);
}

TEST_CASE("video: ffmpeg source reads the shared vtest clip", "[video]") {
  const fs::path dir = test::shared_dir() / "data/vtest";
  if (!fs::exists(dir / "vtest.avi") || !fs::exists(dir / "frames/000000.png"))
    ST_SKIP("shared vtest clip not found under " + dir.string());
  if (!io::ffmpeg_available()) ST_SKIP("ffmpeg/ffprobe not on PATH");

  auto src = io::open_video(dir / "vtest.avi");
  REQUIRE(src->width() == 768);
  REQUIRE(src->height() == 576);
  REQUIRE(src->frame_count() == 795);
  io::Frame f, first;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(src->next(f));
    REQUIRE(f.index == i);
    REQUIRE(f.bgr.height == 576);
    REQUIRE(f.bgr.width == 768);
    if (i == 0) first = f;
  }
  // The shared PNG was decoded from the same file (by PyAV); only the YUV→RGB rounding differs.
  image::Image ref = image::read_bgr(dir / "frames/000000.png");
  double d = mean_abs_diff(first.bgr, ref);
  INFO("mean abs diff " << d);
  REQUIRE(d < 2.0);
}

TEST_CASE("video: label source reads the shared label maps", "[video]") {
  const fs::path dir = test::shared_dir() / "data/vtest/labels";
  if (!fs::exists(dir / "000000.png")) ST_SKIP("shared vtest labels not found under " + dir.string());
  io::LabelSource labels(dir);
  REQUIRE(labels.has(0));
  REQUIRE_FALSE(labels.has(999999));
  REQUIRE_FALSE(labels.has(-1));
  auto l = labels.labels(0, 576, 768);
  REQUIRE(l.size() == size_t(576 * 768));
  REQUIRE(std::all_of(l.begin(), l.end(), [](uint8_t v) { return v <= 8; }));
}

TEST_CASE("video: label source validates its files", "[video]") {
  TempDir tmp;
  image::Image img;
  img.height = 3;
  img.width = 4;
  img.channels = 1;
  for (int i = 0; i < 12; ++i) img.pixels.push_back(uint8_t(i % 9));
  image::write_png(tmp.path / "000003.png", img);

  io::LabelSource labels(tmp.path);
  REQUIRE(labels.dir() == tmp.path);
  REQUIRE(labels.has(3));
  REQUIRE_FALSE(labels.has(4));
  REQUIRE(labels.labels(3, 3, 4) == img.pixels);

  std::string msg = error_of([&] { labels.labels(4, 3, 4); });
  INFO(msg);
  REQUIRE(msg.find("000004.png") != std::string::npos);

  msg = error_of([&] { labels.labels(3, 4, 3); });
  INFO(msg);
  REQUIRE(msg.find("000003.png") != std::string::npos);

  img.pixels[5] = 9;
  image::write_png(tmp.path / "000007.png", img);
  msg = error_of([&] { labels.labels(7, 3, 4); });
  INFO(msg);
  REQUIRE(msg.find("000007.png") != std::string::npos);
  REQUIRE(msg.find("9") != std::string::npos);
}

TEST_CASE("video: label PNG round trip", "[video]") {
  TempDir tmp;
  std::vector<uint8_t> l = {0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 0, 2};
  io::write_label_png(tmp.path / "000000.png", l, 3, 4);
  image::Image back = image::read(tmp.path / "000000.png", 1);
  REQUIRE(back.height == 3);
  REQUIRE(back.width == 4);
  REQUIRE(back.pixels == l);
  REQUIRE(io::LabelSource(tmp.path).labels(0, 3, 4) == l);

  REQUIRE_THROWS_AS(io::write_label_png(tmp.path / "bad.png", l, 4, 4), st::Error);
  l[0] = 9;
  REQUIRE_THROWS_AS(io::write_label_png(tmp.path / "bad.png", l, 3, 4), st::Error);
}

TEST_CASE("video: overlay blends class colours and is RGB on disk", "[video]") {
  TempDir tmp;
  // 1x3 BGR frame: every pixel B=40, G=80, R=120.
  image::Image bgr;
  bgr.height = 1;
  bgr.width = 3;
  bgr.channels = 3;
  bgr.pixels = {40, 80, 120, 40, 80, 120, 40, 80, 120};
  std::vector<uint8_t> l = {0, 8, 2};  // person, background, auto
  const fs::path out = tmp.path / "overlay.png";

  // alpha = 0: the frame itself, converted to RGB.
  io::write_overlay_png(out, bgr, l, 0.0);
  image::Image back = image::read(out, 3);
  REQUIRE(back.height == 1);
  REQUIRE(back.width == 3);
  for (int p = 0; p < 3; ++p) {
    REQUIRE(int(back.pixels[3 * p + 0]) == 120);  // R first on disk
    REQUIRE(int(back.pixels[3 * p + 1]) == 80);
    REQUIRE(int(back.pixels[3 * p + 2]) == 40);
  }

  // alpha = 1: pure class colour; person is red-ish, background untouched.
  io::write_overlay_png(out, bgr, l, 1.0);
  back = image::read(out, 3);
  const int pr = back.pixels[0], pg = back.pixels[1], pb = back.pixels[2];
  REQUIRE(pr > 150);
  REQUIRE(pr > 2 * pg);
  REQUIRE(pr > 2 * pb);
  REQUIRE(int(back.pixels[3]) == 120);
  REQUIRE(int(back.pixels[4]) == 80);
  REQUIRE(int(back.pixels[5]) == 40);
  const int ar = back.pixels[6], ag = back.pixels[7], ab = back.pixels[8];

  // alpha = 0.5: the blend (1 - a) * pixel + a * colour, rounded.
  io::write_overlay_png(out, bgr, l, 0.5);
  back = image::read(out, 3);
  auto blend = [](int pixel, int colour) { return int(std::lround(0.5 * pixel + 0.5 * colour)); };
  REQUIRE(int(back.pixels[0]) == blend(120, pr));
  REQUIRE(int(back.pixels[1]) == blend(80, pg));
  REQUIRE(int(back.pixels[2]) == blend(40, pb));
  REQUIRE(int(back.pixels[3]) == 120);
  REQUIRE(int(back.pixels[4]) == 80);
  REQUIRE(int(back.pixels[5]) == 40);
  REQUIRE(int(back.pixels[6]) == blend(120, ar));
  REQUIRE(int(back.pixels[7]) == blend(80, ag));
  REQUIRE(int(back.pixels[8]) == blend(40, ab));
  REQUIRE((ar != pr || ag != pg || ab != pb));  // classes get different colours

  // Size and value checks.
  REQUIRE_THROWS_AS(io::write_overlay_png(out, bgr, {0, 8}, 0.5), st::Error);
  REQUIRE_THROWS_AS(io::write_overlay_png(out, bgr, {0, 8, 9}, 0.5), st::Error);
  REQUIRE_THROWS_AS(io::write_overlay_png(out, bgr, l, 1.5), st::Error);
  image::Image grey = bgr;
  grey.channels = 1;
  REQUIRE_THROWS_AS(io::write_overlay_png(out, grey, l, 0.5), st::Error);
}

TEST_CASE("video: missing ffmpeg gives an install hint", "[video]") {
  TempDir tmp;
  const fs::path file = tmp.path / "clip.mkv";
  { std::ofstream(file) << "whatever"; }
  PathOverride path(tmp.path.string());  // a PATH without ffmpeg
  REQUIRE_FALSE(io::ffmpeg_available());
  std::string msg = error_of([&] { io::open_video(file); });
  INFO(msg);
  REQUIRE(msg.find("ffmpeg not found") != std::string::npos);
  REQUIRE(msg.find("apt-get install ffmpeg") != std::string::npos);
  // A directory source needs no ffmpeg.
  image::write_png(tmp.path / "0.png", solid_rgb(2, 2, 1, 2, 3));
  REQUIRE(io::open_video(tmp.path)->frame_count() == 1);
}

// Stand-in ffprobe/ffmpeg scripts: the pipe protocol's failure modes without a real decoder.
TEST_CASE("video: ffmpeg pipe failures are reported", "[video]") {
  if (!fs::exists("/bin/sh") || !fs::exists("/usr/bin/head")) ST_SKIP("no /bin/sh or head");
  TempDir tmp;
  const fs::path bin = tmp.path / "bin";
  fs::create_directory(bin);
  const fs::path file = tmp.path / "fake.avi";
  { std::ofstream(file) << "fake"; }
  // 4x2 frames = 24 bytes each.
  write_script(bin / "ffprobe", "echo width=4; echo height=2; echo nb_frames=2");
  PathOverride path(bin.string() + ":/usr/bin:/bin");
  io::Frame f;

  SECTION("a short final read is a truncated frame") {
    write_script(bin / "ffmpeg", "head -c 34 /dev/zero");
    auto src = io::open_video(file);
    REQUIRE(src->frame_count() == 2);
    REQUIRE(src->next(f));
    std::string msg = error_of([&] { src->next(f); });
    INFO(msg);
    REQUIRE(msg.find("truncated frame") != std::string::npos);
    REQUIRE(msg.find("fake.avi") != std::string::npos);
    REQUIRE_FALSE(src->next(f));
  }
  SECTION("a decoder failure quotes ffmpeg's stderr") {
    write_script(bin / "ffmpeg", "head -c 24 /dev/zero; echo 'decoding went wrong' >&2; exit 3");
    auto src = io::open_video(file);
    REQUIRE(src->next(f));
    std::string msg = error_of([&] { src->next(f); });
    INFO(msg);
    REQUIRE(msg.find("decoding went wrong") != std::string::npos);
    REQUIRE(msg.find("exit code 3") != std::string::npos);
  }
  SECTION("a flood on stderr does not deadlock the reader") {
    write_script(bin / "ffmpeg",
                 "yes 'error line' | head -c 300000 >&2; head -c 48 /dev/zero");
    auto src = io::open_video(file);
    int n = 0;
    while (src->next(f)) ++n;
    REQUIRE(n == 2);
  }
  SECTION("ffprobe failure quotes its message") {
    write_script(bin / "ffprobe", "echo 'fake.avi: Invalid data found' >&2; exit 1");
    std::string msg = error_of([&] { io::open_video(file); });
    INFO(msg);
    REQUIRE(msg.find("Invalid data found") != std::string::npos);
    REQUIRE(msg.find(file.string()) != std::string::npos);
  }
  REQUIRE(children_of_self() == 0);
}

TEST_CASE("image: PNG and JPEG encode/decode in memory, and bad bytes", "[video]") {
  image::Image img{20, 30, 3, std::vector<uint8_t>(20 * 30 * 3)};
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = uint8_t((i * 7) % 251);
  auto png = image::encode_png(img);
  REQUIRE(png.size() > 8);
  REQUIRE(png[1] == 'P');
  auto back = image::decode(png.data(), png.size(), 3, 30, 20);
  REQUIRE(back.width == 30);
  REQUIRE(back.height == 20);
  REQUIRE(back.pixels == img.pixels);  // lossless

  image::Image smooth{32, 32, 3, std::vector<uint8_t>(32 * 32 * 3)};
  for (int64_t y = 0; y < 32; ++y)
    for (int64_t x = 0; x < 32; ++x)
      for (int c = 0; c < 3; ++c) smooth.pixels[size_t((y * 32 + x) * 3 + c)] = uint8_t(4 * x + 2 * y + 10 * c);
  auto jpg = image::encode_jpeg(smooth, 95);
  REQUIRE(jpg[0] == 0xFF);
  REQUIRE(jpg[1] == 0xD8);
  auto j2 = image::decode(jpg.data(), jpg.size(), 3, 32, 32);
  double err = 0;
  for (size_t i = 0; i < j2.pixels.size(); ++i) err += std::abs(int(j2.pixels[i]) - int(smooth.pixels[i]));
  REQUIRE(err / double(j2.pixels.size()) < 3.0);
  REQUIRE_THROWS_WITH(image::encode_jpeg(smooth, 0), Catch::Contains("quality"));

  // The header's size is checked before decoding: a 30x20 PNG is refused under a 16x16 limit.
  REQUIRE_THROWS_WITH(image::decode(png.data(), png.size(), 3, 16, 16, "key frame"),
                      Catch::Contains("key frame") && Catch::Contains("30x20") &&
                          Catch::Contains("limit"));
  std::vector<uint8_t> junk(100, 0x42);
  REQUIRE_THROWS_WITH(image::decode(junk.data(), junk.size(), 3, 64, 64, "key frame"),
                      Catch::StartsWith("cannot decode key frame"));
  auto cut = png;
  cut.resize(cut.size() / 2);  // truncated: the header parses, the pixels do not
  REQUIRE_THROWS_WITH(image::decode(cut.data(), cut.size(), 3, 64, 64), Catch::StartsWith("cannot decode"));
  REQUIRE_THROWS(image::decode(nullptr, 0, 3, 64, 64));
  auto rgb = image::bgr_to_rgb(img);
  REQUIRE(rgb.pixels[0] == img.pixels[2]);
  REQUIRE(rgb.pixels[2] == img.pixels[0]);
}
