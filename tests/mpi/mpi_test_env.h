// What the MPI GoogleTest main (mpi_gtest_main.cpp) gives the suites that run under mpirun: the process's one
// MpiSession and a seed every rank agrees on; and the error capture those suites use so that a failing call is
// asserted after the collective it belongs to, with every rank still in step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/base/error.h"
#include "parallel/mpi_session.h"

namespace q4tp::test {

//! The session created by main before any test runs; it lives until every test has finished.
parallel::MpiSession& mpi_session();

//! Rank 0's seed (Q4TP_TEST_SEED, else random; printed by rank 0), broadcast so that every rank can regenerate
//! every other rank's data from it.
std::uint64_t mpi_test_seed();

//! Rank r's data for test `salt`, drawn from mpi_test_seed(): any rank can regenerate any other rank's values.
//! Uniform in [-1, 1) and never zero, so a missing contribution always changes a sum.
inline std::vector<float> rank_floats(int rank, std::size_t n, std::uint64_t salt) {
    std::mt19937_64 rng(mpi_test_seed() ^ (salt * 0x9E3779B97F4A7C15ull) ^
                        (static_cast<std::uint64_t>(rank) + 1) * 0xD1B54A32D192ED03ull);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) {
        do x = dist(rng);
        while (x == 0.0f);
    }
    return v;
}

//! Rank r's random bytes for test `salt` (see rank_floats).
inline std::vector<std::uint8_t> rank_bytes(int rank, std::size_t n, std::uint64_t salt) {
    std::mt19937_64 rng(mpi_test_seed() + salt * 7919 + static_cast<std::uint64_t>(rank) * 104729);
    std::vector<std::uint8_t> v(n);
    for (std::uint8_t& b : v) b = static_cast<std::uint8_t>(rng() >> 56);
    return v;
}

//! Rank 0's `ids` on every rank (a collective): a rank compares its own against it to show that all ranks agree.
inline std::vector<std::int32_t> rank0_ids(const std::vector<std::int32_t>& ids) {
    std::uint64_t count = ids.size();
    mpi_session().broadcast_bytes(&count, sizeof(count), 0);
    std::vector<std::int32_t> root(static_cast<std::size_t>(count));
    if (mpi_session().rank() == 0) root = ids;
    if (count > 0) mpi_session().broadcast_bytes(root.data(), root.size() * sizeof(std::int32_t), 0);
    return root;
}

//! Runs `body` and returns the q4tp::Error message it throws, or "" when it throws nothing.
template <typename Body>
std::string error_of(Body body) {
    try {
        body();
    } catch (const Error& error) {
        return error.what();
    }
    return "";
}

}  // namespace q4tp::test
