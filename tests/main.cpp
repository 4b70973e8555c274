// The Catch2 main shared by all test files.
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
