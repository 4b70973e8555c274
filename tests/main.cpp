// The Catch2 main shared by all test files, and the skip report.
//
// Catch2 v2 has no "skipped" state: a test that calls ST_SKIP (test_util.h) outside ctest warns
// and returns, and Catch2 counts it as passed. So ST_SKIP records the case (note_skip below),
// and after the run this main lists the skipped cases with their reasons and ends with one line
// that counts passed, skipped and failed test cases apart:
//   st_tests: 12 passed, 3 skipped, 0 failed (of 15 test cases; Catch2's summary above counts
//   the skipped ones as passed)
// The exit status stays Catch2's (non-zero when an assertion failed; skips do not fail). Under
// ctest (ST_SKIP_EXIT=1) a skip still ends the process with code 77 before any of this.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "test_util.h"

namespace st::test {
namespace {
struct SkipRecord {
  std::vector<std::pair<std::string, std::string>> skipped;  // (test case, reason), in order
  std::set<std::string> names;
  int passed = 0, skips = 0, failed = 0;
};
SkipRecord& record() {
  static SkipRecord r;
  return r;
}
}  // namespace

// Declared in test_util.h; called by ST_SKIP in the test case being run.
void note_skip(const std::string& reason) {
  const std::string name = Catch::getResultCapture().getCurrentTestName();
  SkipRecord& r = record();
  if (r.names.insert(name).second) r.skipped.emplace_back(name, reason);
}

}  // namespace st::test

// Sorts each finished test case into passed, skipped or failed (a case that failed an assertion
// before it skipped is failed). At global scope: CATCH_REGISTER_LISTENER pastes the name.
struct StSkipCounter : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseEnded(const Catch::TestCaseStats& s) override {
    st::test::SkipRecord& r = st::test::record();
    if (s.totals.assertions.failed > 0 || s.aborting) ++r.failed;
    else if (r.names.count(s.testInfo.name)) ++r.skips;
    else ++r.passed;
  }
};
CATCH_REGISTER_LISTENER(StSkipCounter)

int main(int argc, char* argv[]) {
  Catch::Session session;
  const int rc = session.run(argc, argv);
  const st::test::SkipRecord& r = st::test::record();
  const int total = r.passed + r.skips + r.failed;
  if (total == 0) return rc;  // --list-*, --help, or nothing matched: Catch2 has said so
  if (!r.skipped.empty()) {
    std::printf("\n%zu test case(s) SKIPPED:\n", r.skipped.size());
    for (const auto& [name, reason] : r.skipped)
      std::printf("  %s\n      %s\n", name.c_str(), reason.c_str());
  }
  std::printf("st_tests: %d passed, %d skipped, %d failed (of %d test cases%s)\n", r.passed,
              r.skips, r.failed, total,
              r.skips ? "; Catch2's summary above counts the skipped ones as passed" : "");
  std::fflush(stdout);
  return rc;
}

// The skip report's own check (hidden: run by the ctest entries "skip report: ..." of
// CMakeLists.txt, which read the lines above): one case that passes, one that skips.
TEST_CASE("skip report: a case that passes", "[.skip-report]") { CHECK(true); }
TEST_CASE("skip report: a case that skips", "[.skip-report]") {
  ST_SKIP("the skip report's self-check: this case always skips");
}
