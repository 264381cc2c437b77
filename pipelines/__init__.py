"""m2u.pipelines"""
